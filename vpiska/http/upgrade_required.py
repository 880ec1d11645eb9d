"""A plain HTTP request to the WebSocket endpoint: 426 Upgrade Required, not a 404.

The socket itself is served in front of Quart (`EventSocketEndpoint`), which sees only
WebSocket handshakes; without this route a browser, curl or Swagger UI's "Try it out" asking
the same URL would be told that nothing lives there. Empty body, like the handshake's refusals.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from vpiska.http.websocket import PATH


def upgrade_required_routes() -> Blueprint:
    routes = Blueprint("upgrade_required", __name__)

    @routes.get(PATH)
    async def upgrade_required() -> Any:
        return Response(b"", status=426, headers={"Upgrade": "websocket"})

    return routes
