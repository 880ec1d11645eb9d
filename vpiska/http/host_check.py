"""Requests whose Host header no name can be made of are answered 400 at the door.

Quart builds every request's URL adapter from the Host header, and werkzeug refuses one that
cannot be IDNA-encoded (`Host: a..b`: an empty label) with BadHost while the request context
is being made, before any error handler of ours: hypercorn then answered 500 and logged an
error. A client sent it; it gets a 400, and an info line.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger(__name__)


class HostCheck:
    def __init__(self, app: Any) -> None:
        self._app = app

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        # Not a coroutine itself: nothing of this layer stays in memory while a WebSocket lives.
        if scope["type"] in ("http", "websocket") and not _nameable(scope):
            return self._refuse(scope, receive, send)
        result: Awaitable[None] = self._app(scope, receive, send)
        return result

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        log.info("request refused: Host header is not a host name",
                 extra={"path": scope.get("path", "")[:200]})
        start = "http.response.start" if scope["type"] == "http" else \
            "websocket.http.response.start"
        body = "http.response.body" if scope["type"] == "http" else \
            "websocket.http.response.body"
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
        await send({"type": start, "status": 400,
                    "headers": [(b"content-length", b"0"), (b"connection", b"close")]})
        await send({"type": body, "body": b""})


# Host header values already judged: a kept-alive client sends the same one every time, and the
# IDNA codec is slow. Bounded: emptied when full.
_judged: dict[bytes, bool] = {}
_JUDGED_MAX = 1024


def _nameable(scope: dict[str, Any]) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            nameable = _judged.get(value)
            if nameable is None:
                if len(_judged) >= _JUDGED_MAX:
                    _judged.clear()
                nameable = _judged[value] = _host_nameable(value)
            if not nameable:
                return False
    return True


def _host_nameable(value: bytes) -> bool:
    host = value.decode("latin-1").rpartition("@")[2]
    if host.startswith("["):  # an IPv6 literal: no IDNA there
        return True
    try:
        host.partition(":")[0].encode("idna")
    except UnicodeError:
        return False
    return True
