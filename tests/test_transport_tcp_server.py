"""vpiska/transport/tcp_server.py: one connection over trio.testing.memory_stream_pair, as
hypercorn's own tests/trio/ run its TCPServer, on virtual time (the keep-alive deadline, the
body deadline) with ASGI apps written here."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
import trio
import trio.testing
from hypercorn.app_wrappers import ASGIWrapper

from tests.helpers.mock_socket import MockSocket
from vpiska.transport import ServerConfig, install
from vpiska.transport.tcp_server import VpiskaTCPServer
from vpiska.transport.worker_context import VpiskaWorkerContext

KEEP_ALIVE = 5.0
BODY_TIMEOUT = 1.0
WAIT = 60.0  # virtual seconds a client waits for what it expects (the tests run on autojump)


async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app answering `ok`, with `Connection: close` if the request asks to be refused; it
    reads the body only when it answers 200."""
    refuse = scope["path"] == "/refuse"
    if not refuse:
        while (await receive()).get("more_body", False):
            pass
    headers = [(b"content-length", b"2")] + ([(b"connection", b"close")] if refuse else [])
    await send({"type": "http.response.start", "status": 401 if refuse else 200,
                "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


class Peer:
    """The client's end of the connection, and the server's sends counted."""

    def __init__(self, stream: trio.StapledStream[Any, Any]) -> None:
        self.stream = stream
        self.sends = 0

    async def read_until_closed(self) -> bytes:
        data = b""
        with trio.fail_after(WAIT):
            while chunk := await self.stream.receive_some(65536):
                data += chunk
        return data

    async def read_response(self) -> bytes:
        data = b""
        with trio.fail_after(WAIT):
            while not data.endswith(b"ok"):
                data += await self.stream.receive_some(65536)
        return data


@pytest.fixture
async def connection(nursery: trio.Nursery) -> tuple[Peer, VpiskaWorkerContext]:
    assert install(enabled=True)  # as every server start does (vpiska/server.py)
    config = ServerConfig()
    config.keep_alive_timeout = KEEP_ALIVE
    config.body_timeout = BODY_TIMEOUT
    client, server_stream = trio.testing.memory_stream_pair()
    server_stream.socket = MockSocket()  # type: ignore[attr-defined]
    peer = Peer(client)
    sends = server_stream.send_all

    async def counted(data: bytes | bytearray | memoryview) -> None:
        peer.sends += 1
        await sends(data)

    server_stream.send_all = counted  # type: ignore[method-assign]
    context = VpiskaWorkerContext(None)
    server = VpiskaTCPServer(ASGIWrapper(cast("Any", answer)), config, context, {},
                             cast("Any", server_stream))
    nursery.start_soon(server.run)
    return peer, context


async def test_a_response_goes_out_in_one_send(
    connection: tuple[Peer, VpiskaWorkerContext], autojump_clock: trio.testing.MockClock
) -> None:
    peer, _ = connection
    await peer.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await peer.read_response()
    assert response.startswith(b"HTTP/1.1 200 ")
    assert peer.sends == 1  # head, body and end together


async def test_an_idle_keep_alive_connection_closes_at_keep_alive_timeout(
    connection: tuple[Peer, VpiskaWorkerContext], autojump_clock: trio.testing.MockClock
) -> None:
    peer, _ = connection
    await peer.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await peer.read_response()
    answered = trio.current_time()
    assert await peer.read_until_closed() == b""
    assert trio.current_time() - answered == pytest.approx(KEEP_ALIVE)


async def test_a_shutdown_closes_an_idle_connection_at_once(
    connection: tuple[Peer, VpiskaWorkerContext], autojump_clock: trio.testing.MockClock
) -> None:
    peer, context = connection
    await peer.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await peer.read_response()
    await trio.testing.wait_all_tasks_blocked()
    answered = trio.current_time()
    await context.terminated.set()
    assert await peer.read_until_closed() == b""
    assert trio.current_time() == answered


async def test_a_body_that_does_not_arrive_in_time_closes_the_connection(
    connection: tuple[Peer, VpiskaWorkerContext], autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture
) -> None:
    peer, _ = connection
    sent = trio.current_time()
    with caplog.at_level(logging.INFO):
        await peer.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        closed_at = trio.current_time()
        try:
            for _ in range(50):  # a byte every 0.1 s: each read is quick, the body is not
                await peer.stream.send_all(b" ")
                closed_at = trio.current_time()
                await trio.sleep(BODY_TIMEOUT / 10)
        except trio.BrokenResourceError:  # the server closed the connection
            pass
        assert await peer.read_until_closed() == b""  # and no answer was due
    assert closed_at - sent == pytest.approx(BODY_TIMEOUT, abs=BODY_TIMEOUT / 10)
    assert [r.message for r in caplog.records] == ["request body too slow: connection closed"]


async def test_a_connection_close_answer_closes_the_connection(
    connection: tuple[Peer, VpiskaWorkerContext], autojump_clock: trio.testing.MockClock
) -> None:
    peer, _ = connection
    sent = trio.current_time()
    await peer.stream.send_all(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    answer = await peer.read_until_closed()  # the body never comes: closed anyway
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in answer.lower()
    assert trio.current_time() == sent
