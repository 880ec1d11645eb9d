"""hypercorn's configuration, with what the transport adds to it."""

from __future__ import annotations

from hypercorn.config import Config as HypercornConfig


class ServerConfig(HypercornConfig):
    """hypercorn's configuration and the transport's own settings."""

    # Connections the kernel completes and holds for the accept loop (hypercorn's default:
    # 100). In a reconnect storm thousands arrive within a second while a busy loop accepts
    # one per turn; past the backlog the kernel drops their SYNs, and each client's TCP tries
    # again only after 1, 3, 7, 15 s ... (the storm's stragglers). The kernel caps it at
    # net.core.somaxconn (4096 by default since Linux 5.4).
    backlog = 4096

    # Longest a request body may take to arrive, from its request's head; then the connection
    # is closed (tcp_server.py). None: no bound.
    body_timeout: float | None = None
    # WebSocket paths served off the socket, below hypercorn (direct_websocket.py); raw, as the
    # request line has them.
    direct_websocket_paths: frozenset[bytes] = frozenset()
    # WebSocket handshakes a worker may have in progress on the direct path; past it a new one
    # is answered 503 at once (admission.py). None: no bound.
    max_pending_handshakes: int | None = None
