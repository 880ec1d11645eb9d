"""Request ids: every HTTP request and WebSocket gets one, every log line it causes carries it.

A client or proxy that sends `X-Request-Id` has its id kept, so a request can be followed from
the edge to our logs; anything else gets a fresh one. The id is echoed in the response's
`X-Request-Id` header for the client to quote. The event WebSocket is served in front of Quart
(vpiska/http/websocket.py) and names its handshake with `name_socket`.
"""

from __future__ import annotations

import os
import re

from quart import Quart, Response, request

from vpiska.logs import request_id

HEADER = "X-Request-Id"
# What we take from outside: short, and characters that need no escaping wherever the id goes
# (a log query, a header, a URL). Anything else is replaced, not trusted.
ACCEPTED = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")


def install_request_ids(app: Quart) -> None:
    @app.before_request
    async def name_request() -> None:
        request_id.set(choose(request.headers.get(HEADER, "")))

    @app.after_request
    async def echo_on_response(response: Response) -> Response:
        return _echo(response)


def name_socket(offered: str) -> str:
    """Name a WebSocket handshake served outside Quart, which `offered` in its X-Request-Id
    header; the id to echo if it is refused."""
    chosen = choose(offered)
    request_id.set(chosen)
    return chosen


def choose(offered: str) -> str:
    # 32 random hex digits, as uuid4().hex gives (less its six fixed bits) for a sixth of the CPU.
    return offered if ACCEPTED.fullmatch(offered) else os.urandom(16).hex()


def _echo(response: Response) -> Response:
    serving = request_id.get()
    if serving is not None:
        response.headers[HEADER] = serving
    return response
