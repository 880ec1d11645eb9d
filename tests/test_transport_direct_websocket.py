"""vpiska/transport/direct_websocket.py: a WebSocket served off its socket, with a fake of its
TCP connection (`DirectConnection`) over a local socket pair, and ASGI apps written here."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig

from vpiska.sink import sink_of
from vpiska.transport.direct_websocket import DirectWebSocket
from vpiska.transport.pinger import Pinger
from vpiska.transport.upgrade import parse_upgrade

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example, and its answer:
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
PATH = b"/ws"
HEAD = (b"GET /ws?room=1 HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY
        + b"\r\n\r\n")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Connection:
    """What a direct WebSocket needs of its TCP connection, on one end of a socket pair."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.config = HypercornConfig()
        self.config.websocket_ping_interval = None
        self.send_lock = trio.Lock()
        self.peer_address: tuple[str, int] | None = ("127.0.0.1", 50000)
        self.local_address: tuple[str, int] | None = ("127.0.0.1", 5000)
        self.closes: list[bool] = []  # `linger` of each close
        self._sock = sock

    async def send_raw(self, data: bytes) -> bool:
        async with self.send_lock:
            while data:
                data = data[await self._sock.send(data):]
        return True

    async def close_now(self, *, linger: bool = False) -> None:
        self.closes.append(linger)
        self._sock.close()

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"server", b"test")]

    def pinger(self, interval: float) -> Pinger | None:
        return None

    def lifespan_state(self) -> dict[str, Any]:
        return {}


@pytest.fixture
async def pair() -> AsyncIterator[tuple[trio.socket.SocketType, trio.socket.SocketType]]:
    ours, theirs = socket.socketpair()
    server, peer = trio.socket.from_stdlib_socket(ours), trio.socket.from_stdlib_socket(theirs)
    with server, peer:
        yield server, peer


def websocket(server: trio.socket.SocketType, sent: bytes = b"",
              handshake_over: Callable[[], None] | None = None
              ) -> tuple[DirectWebSocket, Connection]:
    parsed = parse_upgrade(HEAD + sent, frozenset({PATH}), 16384)
    assert parsed is not None
    connection = Connection(server)
    return DirectWebSocket(connection, server, *parsed, handshake_over), connection


def masked(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + b"\0\0\0\0" + payload


async def read_answer(peer: trio.socket.SocketType) -> tuple[bytes, bytes]:
    """The HTTP head the server answered with, and what came after it."""
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await peer.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def test_the_scope_is_hypercorns_for_the_same_request(
    pair: tuple[trio.socket.SocketType, trio.socket.SocketType]
) -> None:
    ws, _ = websocket(pair[0])
    scope = ws.scope
    assert scope is not None
    assert scope["path"] == "/ws"
    assert scope["query_string"] == b"room=1"
    assert scope["client"] == ("127.0.0.1", 50000)
    assert (b"host", b"example") in scope["headers"]


async def test_an_accept_answers_101_and_frames_sent_with_the_handshake_come_first(
    pair: tuple[trio.socket.SocketType, trio.socket.SocketType]
) -> None:
    server, peer = pair
    ws, _ = websocket(server, masked(0x1, b"first"))
    scope = ws.scope
    assert scope is not None
    assert await ws.receive() == {"type": "websocket.connect"}
    await ws.send({"type": "websocket.accept"})
    head, _ = await read_answer(peer)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-accept: " + ACCEPT in head
    assert await ws.receive() == {"type": "websocket.receive", "text": "first", "bytes": None}
    assert sink_of(scope) is ws  # the connection is its own Sink
    assert ws.scope is None  # it keeps nothing of the handshake for the socket's life


async def test_frames_of_one_read_are_received_in_the_order_sent(
    pair: tuple[trio.socket.SocketType, trio.socket.SocketType]
) -> None:
    server, peer = pair
    ws, _ = websocket(server)
    await ws.receive()
    await ws.send({"type": "websocket.accept"})
    await read_answer(peer)
    await peer.send(masked(0x1, b"one") + masked(0x1, b"two") + masked(0x1, b"three"))
    with trio.fail_after(5):
        texts = [(await ws.receive())["text"] for _ in range(3)]
    assert texts == ["one", "two", "three"]


async def test_a_refusal_sends_the_apps_response_and_drops_what_came_after(
    pair: tuple[trio.socket.SocketType, trio.socket.SocketType]
) -> None:
    server, peer = pair
    ws, _ = websocket(server, masked(0x1, b"dropped"))
    await ws.receive()
    await ws.send({"type": "websocket.http.response.start", "status": 401, "headers": []})
    await ws.send({"type": "websocket.http.response.body", "body": b"who?"})
    head, body = await read_answer(peer)
    assert head.startswith(b"HTTP/1.1 401 Unauthorized")
    assert b"connection: close" in head
    assert b"server: test" in head
    assert body == b"who?"
    assert (await ws.receive())["type"] == "websocket.disconnect"


async def test_an_app_that_returns_without_answering_gets_a_500_and_the_socket_closes(
    pair: tuple[trio.socket.SocketType, trio.socket.SocketType]
) -> None:
    server, peer = pair
    ws, connection = websocket(server)

    async def app(scope: dict[str, Any], receive: Receive, send: Send, *_: object) -> None:
        await receive()

    await ws.serve(app)
    head, _ = await read_answer(peer)
    assert head.startswith(b"HTTP/1.1 500 ")
    assert connection.closes == [True]  # lingering for what the peer still sends


async def test_the_handshake_is_over_once_the_app_asks_for_a_frame_after_its_accept(
    pair: tuple[trio.socket.SocketType, trio.socket.SocketType]
) -> None:
    over: list[str] = []  # what the worker's admission hears (admission.py)
    ws, _ = websocket(pair[0], masked(0x1, b"first"), lambda: over.append("over"))

    async def app(scope: dict[str, Any], receive: Receive, send: Send, *_: object) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert over == []  # accepted, the member not yet in its room
        await receive()
        assert over == ["over"]

    await ws.serve(app)
    assert over == ["over"]  # once, also when the connection then ends


async def test_the_handshake_is_over_once_the_app_has_refused_it(
    pair: tuple[trio.socket.SocketType, trio.socket.SocketType]
) -> None:
    over: list[str] = []
    ws, _ = websocket(pair[0], handshake_over=lambda: over.append("over"))

    async def app(scope: dict[str, Any], receive: Receive, send: Send, *_: object) -> None:
        await receive()
        await send({"type": "websocket.close"})  # a 403

    await ws.serve(app)
    assert over == ["over"]


async def test_a_frame_wsproto_cannot_parse_gets_its_close_code(
    pair: tuple[trio.socket.SocketType, trio.socket.SocketType]
) -> None:
    server, peer = pair
    ws, _ = websocket(server, masked(0x1, b"\xff\xfe"))
    await ws.receive()
    await ws.send({"type": "websocket.accept"})
    assert await ws.receive() == {"type": "websocket.disconnect", "code": 1007}
    _, frames = await read_answer(peer)
    assert frames[:1] == b"\x88"  # a close frame
    assert struct.unpack("!H", frames[2:4]) == (1007,)


async def test_an_answer_after_the_answer_is_refused(
    pair: tuple[trio.socket.SocketType, trio.socket.SocketType]
) -> None:
    ws, _ = websocket(pair[0])
    await ws.receive()
    await ws.send({"type": "websocket.accept"})
    with pytest.raises(RuntimeError, match="'websocket.accept' on a direct WebSocket accepted"):
        await ws.send({"type": "websocket.accept"})
    with pytest.raises(RuntimeError, match="'websocket.http.response.start'"):
        await ws.send({"type": "websocket.http.response.start", "status": 403, "headers": []})


async def test_the_sink_writes_at_once_unless_another_send_is_under_way(
    pair: tuple[trio.socket.SocketType, trio.socket.SocketType]
) -> None:
    server, peer = pair
    ws, connection = websocket(server)
    await ws.receive()
    await ws.send({"type": "websocket.accept"})
    await read_answer(peer)
    frame = b"\x81\x02hi"
    assert ws.write_now(frame) == len(frame)
    async with connection.send_lock:
        assert ws.write_now(frame) == 0  # the caller queues it behind the send under way
    with trio.fail_after(5):
        assert await peer.recv(100) == frame
