"""hypercorn's configuration, with what the transport adds to it."""

from __future__ import annotations

from hypercorn.config import Config as HypercornConfig


class ServerConfig(HypercornConfig):
    """hypercorn's configuration and the transport's own settings."""

    # Longest a request body may take to arrive, from its request's head; then the connection
    # is closed (tcp_server.py). None: no bound.
    body_timeout: float | None = None
    # WebSocket paths served off the socket, below hypercorn (direct_websocket.py); raw, as the
    # request line has them.
    direct_websocket_paths: frozenset[bytes] = frozenset()
    # WebSocket handshakes a worker may have in progress on the direct path; past it a new one
    # is answered 503 at once (admission.py). None: no bound.
    max_pending_handshakes: int | None = None
