"""vpiska/transport/ws_stream.py and h11_protocol.py: a WebSocket upgraded through hypercorn's
HTTP/1.1 protocol is handed its connection's plain socket, and only a plain one, explicitly."""

from __future__ import annotations

import socket
from typing import Any, cast

import trio
import trio.testing
from hypercorn.app_wrappers import ASGIWrapper

from tests.helpers.mock_socket import MockSocket
from vpiska.sink import Sink, sink_of
from vpiska.transport import ServerConfig, install
from vpiska.transport.direct_sink import DirectSink
from vpiska.transport.tcp_server import VpiskaTCPServer
from vpiska.transport.worker_context import VpiskaWorkerContext

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
FRAME = b"\x81\x05hello"


def app_keeping_its_sink(sinks: list[Sink | None], done: trio.Event) -> ASGIWrapper:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        sink = sink_of(scope)
        sinks.append(sink)
        if sink is not None:
            assert sink.write_now(FRAME) == len(FRAME)
        await done.wait()

    return ASGIWrapper(cast("Any", app))


async def serve(stream: Any, sinks: list[Sink | None], done: trio.Event,
                nursery: trio.Nursery) -> None:
    assert install(enabled=True)
    config = ServerConfig()
    config.websocket_ping_interval = None
    server = VpiskaTCPServer(app_keeping_its_sink(sinks, done), config,
                             VpiskaWorkerContext(None), {}, cast("Any", stream))
    nursery.start_soon(server.run)


async def read_until(stream: Any, end: bytes) -> bytes:
    data = b""
    with trio.fail_after(10):
        while not data.endswith(end):
            data += await stream.receive_some(65536)
    return data


async def test_an_upgrade_on_a_plain_socket_gets_a_direct_sink(nursery: trio.Nursery) -> None:
    ours, theirs = socket.socketpair()
    server_stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    sinks: list[Sink | None] = []
    done = trio.Event()
    async with client:
        await serve(server_stream, sinks, done, nursery)
        await client.send_all(UPGRADE)
        answer = await read_until(client, FRAME)
        assert answer.startswith(b"HTTP/1.1 101 ")  # and then the frame, written by the sink
        assert [type(sink) for sink in sinks] == [DirectSink]
        done.set()


async def test_an_upgrade_without_a_plain_socket_gets_no_sink(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, server_stream = trio.testing.memory_stream_pair()
    server_stream.socket = MockSocket()  # type: ignore[attr-defined]
    sinks: list[Sink | None] = []
    done = trio.Event()
    await serve(server_stream, sinks, done, nursery)
    await client.send_all(UPGRADE)
    assert (await read_until(client, b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    await trio.testing.wait_all_tasks_blocked()
    assert sinks == [None]  # its frames go through ASGI
    done.set()
