"""vpiska/transport/lifecycle.py: the connection's and the direct WebSocket's states."""

from __future__ import annotations

import pytest

from vpiska.transport.lifecycle import ConnectionState, WebSocketState


@pytest.mark.parametrize("path", [
    pytest.param([ConnectionState.STOPPING, ConnectionState.CLOSING, ConnectionState.CLOSED],
                 id="asked-to-close"),
    pytest.param([ConnectionState.CLOSING, ConnectionState.CLOSED], id="closed-by-itself"),
])
def test_a_connection_goes_from_open_to_closed(path: list[ConnectionState]) -> None:
    state = ConnectionState.OPEN
    for following in path:
        state = state.advance(following)
    assert state is ConnectionState.CLOSED


@pytest.mark.parametrize(("start", "to"), [
    (ConnectionState.CLOSED, ConnectionState.OPEN),
    (ConnectionState.CLOSED, ConnectionState.CLOSING),
    (ConnectionState.CLOSING, ConnectionState.STOPPING),
    (ConnectionState.OPEN, ConnectionState.CLOSED),
    (ConnectionState.OPEN, ConnectionState.OPEN),
])
def test_a_connection_refuses_a_transition_it_lacks(
    start: ConnectionState, to: ConnectionState
) -> None:
    with pytest.raises(RuntimeError, match=f"a connection {start.value} cannot become {to.value}"):
        start.advance(to)


@pytest.mark.parametrize("path", [
    pytest.param([WebSocketState.HANDSHAKE, WebSocketState.ACCEPTED], id="accepted"),
    pytest.param([WebSocketState.HANDSHAKE, WebSocketState.REFUSED], id="refused"),
    pytest.param([WebSocketState.HANDSHAKE, WebSocketState.RESPONDING, WebSocketState.REFUSED],
                 id="refused-with-a-response"),
    pytest.param([WebSocketState.ACCEPTED], id="accepted-before-connect-was-read"),
])
def test_a_websocket_is_answered_once(path: list[WebSocketState]) -> None:
    state = WebSocketState.CONNECTING
    for following in path:
        state = state.advance(following)
    assert state is path[-1]


@pytest.mark.parametrize(("start", "to"), [
    (WebSocketState.ACCEPTED, WebSocketState.REFUSED),
    (WebSocketState.ACCEPTED, WebSocketState.ACCEPTED),
    (WebSocketState.REFUSED, WebSocketState.ACCEPTED),
    (WebSocketState.RESPONDING, WebSocketState.ACCEPTED),
    (WebSocketState.HANDSHAKE, WebSocketState.CONNECTING),
])
def test_a_websocket_refuses_a_second_answer(start: WebSocketState, to: WebSocketState) -> None:
    with pytest.raises(RuntimeError, match=f"a WebSocket {start.value} cannot become {to.value}"):
        start.advance(to)
