"""LOGGING_TRACE_REQUESTS: one log line per request and one per response, for debugging a client.

API.md: JSON bodies are shown, other bodies are `(hidden)`, and passwords and tokens are never
logged. So a body is shown only once it has been parsed as JSON (what the handler read, see
`json_object`), with every secret field's value replaced; a body that is not JSON, an upload or
a downloaded file is `(hidden)`, whatever its bytes, since a malformed body may still hold a
password. Headers are not logged (Authorization carries the token); query parameters are, with
`accessToken` (the WebSocket's token) replaced. The event WebSocket is served in front of Quart
(vpiska/http/websocket.py) and traces its handshake with `trace_handshake`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from quart import Quart, Response, g, request
from quart.wrappers.response import DataBody
from werkzeug.datastructures import MultiDict

from vpiska.http.body import parsed_json_body

log = logging.getLogger(__name__)

HIDDEN = "(hidden)"
# Field and parameter names whose values are secrets, compared case-insensitively.
SECRETS = frozenset({"password", "confirmpassword", "accesstoken", "token", "authorization"})


def install_request_tracing(app: Quart) -> None:
    @app.before_request
    async def start_request() -> None:
        g.trace_started = time.perf_counter()

    @app.after_request
    async def trace_request(response: Response) -> Response:
        log.info("http request", extra={
            "method": request.method, "path": request.path, "query": redact_query(request.args),
            "content_type": request.mimetype or None, "body": _request_body(),
        })
        log.info("http response", extra={
            "status": response.status_code, "duration_ms": _elapsed_ms(),
            "content_type": response.mimetype or None, "body": await _response_body(response),
        })
        return response


def trace_handshake(path: str, query: dict[str, list[str]], status: int) -> None:
    """One line per WebSocket handshake: its query (token replaced) and the answer, 101 or a
    refusal's status."""
    log.info("websocket handshake", extra={
        "path": path, "query": redact_query(MultiDict(query)), "status": status})


def redact(value: Any) -> Any:
    """`value` with the value of every secret-named field, at any depth, replaced."""
    if isinstance(value, dict):
        return {key: HIDDEN if str(key).lower() in SECRETS else redact(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def redact_query(args: MultiDict[str, str]) -> dict[str, Any]:
    return {key: HIDDEN if key.lower() in SECRETS else values if len(values) > 1 else values[0]
            for key, values in args.lists()}


def _request_body() -> Any:
    body = parsed_json_body()
    if body is not None:
        return redact(body)
    return HIDDEN if request.content_length or request.headers.get("Transfer-Encoding") else None


async def _response_body(response: Response) -> Any:
    # Only a body built in memory is ours: a downloaded file is the uploader's bytes, whatever
    # Content-Type they were stored with.
    if response.mimetype != "application/json" or not isinstance(response.response, DataBody):
        return HIDDEN if response.content_length else None
    try:
        return redact(json.loads(await response.get_data()))
    except ValueError:
        return HIDDEN


def _elapsed_ms() -> float | None:
    started = g.get("trace_started")
    return None if started is None else round((time.perf_counter() - started) * 1000, 3)
