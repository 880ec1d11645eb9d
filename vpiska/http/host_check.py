"""Requests whose Host header no name can be made of are answered 400 at the door.

Quart builds every request's URL adapter from the Host header, and werkzeug refuses one that
cannot be IDNA-encoded (`Host: a..b`: an empty label) with BadHost while the request context
is being made, before any error handler of ours: hypercorn then answered 500 and logged an
error. A client sent it; it gets a 400, and an info line.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class HostCheck:
    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not _nameable(scope):
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
            return
        await self._app(scope, receive, send)


def _nameable(scope: dict[str, Any]) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1").rpartition("@")[2]
            if host.startswith("["):  # an IPv6 literal: no IDNA there
                return True
            try:
                host.partition(":")[0].encode("idna")
            except UnicodeError:
                return False
    return True
