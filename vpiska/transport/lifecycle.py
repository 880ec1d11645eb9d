"""The lifecycles of a TCP connection and of a direct WebSocket, as state enums.

Each state says what may happen next; `advance` moves to a next state and raises RuntimeError,
naming both states, for a transition the lifecycle does not have (as Starlette's WebSocketState
does): a bug in the transport, never something a peer can cause.
"""

from __future__ import annotations

import enum


class ConnectionState(enum.Enum):
    """A TCP connection served by the transport (tcp_server.py)."""

    OPEN = "open"  # the reader reads; nothing has asked to close
    STOPPING = "stopping"  # a close was asked for: the reader stops (it did not time out)
    CLOSING = "closing"  # the end of the stream is sent; the peer's last bytes are drained
    CLOSED = "closed"  # the socket is closed

    def advance(self, to: ConnectionState) -> ConnectionState:
        if to not in _CONNECTION_NEXT[self]:
            raise RuntimeError(f"a connection {self.value} cannot become {to.value}")
        return to


_CONNECTION_NEXT: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.OPEN: frozenset({ConnectionState.STOPPING, ConnectionState.CLOSING}),
    ConnectionState.STOPPING: frozenset({ConnectionState.CLOSING}),
    ConnectionState.CLOSING: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}


class WebSocketState(enum.Enum):
    """A WebSocket served off its socket (direct_websocket.py), as its ASGI app sees it."""

    CONNECTING = "connecting"  # the app has not yet received `websocket.connect`
    HANDSHAKE = "handshake"  # the app has; it has not answered
    RESPONDING = "responding"  # the app refuses with its own response; its body is coming
    ACCEPTED = "accepted"  # the 101 is sent: frames flow until either side closes
    REFUSED = "refused"  # an HTTP response answered the handshake; the connection ends

    def advance(self, to: WebSocketState) -> WebSocketState:
        if to not in _WEBSOCKET_NEXT[self]:
            raise RuntimeError(f"a WebSocket {self.value} cannot become {to.value}")
        return to


_ANSWERS = frozenset({WebSocketState.ACCEPTED, WebSocketState.RESPONDING,
                      WebSocketState.REFUSED})
_WEBSOCKET_NEXT: dict[WebSocketState, frozenset[WebSocketState]] = {
    # An app may answer before it asks for `websocket.connect`, as hypercorn allows.
    WebSocketState.CONNECTING: _ANSWERS | {WebSocketState.HANDSHAKE},
    WebSocketState.HANDSHAKE: _ANSWERS,
    WebSocketState.RESPONDING: frozenset({WebSocketState.REFUSED}),
    WebSocketState.ACCEPTED: frozenset(),
    WebSocketState.REFUSED: frozenset(),
}
