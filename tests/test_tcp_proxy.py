"""tests/helpers/tcp_proxy.py against a tiny echo server in the same trio run: what passes, what a
cut and a freeze do to each side."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio

from tests.helpers.tcp_proxy import WAIT_SECONDS, TcpProxy, open_tcp_proxy


class EchoServer:
    """Sends back whatever it receives; records what it received and how each connection
    ended. `push` sends to every connection, for what the target says unprompted."""

    def __init__(self) -> None:
        self.port = 0
        self.received = b""
        self.streams: list[trio.SocketStream] = []
        self.ended: list[str] = []  # "eof" or "reset", one per finished connection
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._echo, listeners)
            task_status.started()

    async def _echo(self, stream: trio.SocketStream) -> None:
        self.streams.append(stream)
        self._notify()
        try:
            while data := await stream.receive_some():
                self.received += data
                self._notify()
                await stream.send_all(data)
            self.ended.append("eof")
        except trio.BrokenResourceError:
            self.ended.append("reset")
        self._notify()

    async def push(self, data: bytes) -> None:
        for stream in self.streams:
            await stream.send_all(data)

    async def wait_for(self, condition: Callable[[EchoServer], bool]) -> None:
        with trio.fail_after(WAIT_SECONDS):
            while not condition(self):
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@pytest.fixture
async def echo(nursery: trio.Nursery) -> EchoServer:
    server = EchoServer()
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[TcpProxy]:
    async with open_tcp_proxy("127.0.0.1", echo.port) as running:
        yield running


async def connect(proxy: TcpProxy) -> trio.SocketStream:
    return await trio.open_tcp_stream(proxy.host, proxy.port)


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    with trio.fail_after(WAIT_SECONDS):
        while len(data) < size:
            chunk = await stream.receive_some(size - len(data))
            assert chunk, f"the connection ended after {data!r}"
            data += chunk
    return data


async def round_trip(stream: trio.SocketStream, data: bytes) -> None:
    await stream.send_all(data)
    assert await receive_exactly(stream, len(data)) == data


async def assert_reset(stream: trio.SocketStream) -> None:
    with trio.fail_after(WAIT_SECONDS), pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()


async def test_forwards_both_ways_and_passes_an_orderly_end_on(
    proxy: TcpProxy, echo: EchoServer
) -> None:
    async with await connect(proxy) as client:
        await round_trip(client, b"hello")
        await round_trip(client, b"x" * 200_000)  # more than one chunk each way
        assert proxy.connections == 1
        await client.send_eof()
        with trio.fail_after(WAIT_SECONDS):
            assert await client.receive_some() == b""
    await echo.wait_for(lambda e: e.ended == ["eof"])
    await proxy.wait_for(lambda p: p.connections == 0)
    assert proxy.url() == f"redis://127.0.0.1:{proxy.port}"


async def test_cut_resets_both_sides_and_refuses_new_connections_until_restored(
    proxy: TcpProxy, echo: EchoServer
) -> None:
    async with await connect(proxy) as client:
        await round_trip(client, b"before")
        proxy.cut()
        await assert_reset(client)
    await echo.wait_for(lambda e: e.ended == ["reset"])
    assert proxy.connections == 0

    async with await connect(proxy) as refused:  # accepted by the kernel, reset by the proxy
        await assert_reset(refused)
    assert len(echo.streams) == 1  # it never reached the target
    assert proxy.accepted == 2

    proxy.restore()
    async with await connect(proxy) as client:
        await round_trip(client, b"after")


async def test_freeze_holds_bytes_both_ways_without_closing_until_thawed(
    proxy: TcpProxy, echo: EchoServer
) -> None:
    async with await connect(proxy) as client:
        await round_trip(client, b"warm")
        proxy.freeze()
        await client.send_all(b"ping")
        await proxy.wait_for(lambda p: p.held == 4)  # read by the proxy, not delivered
        assert echo.received == b"warm"
        await echo.push(b"news")
        await proxy.wait_for(lambda p: p.held == 8)
        assert proxy.connections == 1
        assert echo.ended == []

        async with await connect(proxy) as late:  # a connection made while frozen: frozen too
            await echo.wait_for(lambda e: len(e.streams) == 2)
            await late.send_all(b"late")
            await proxy.wait_for(lambda p: p.held == 12)
            proxy.thaw()
            assert await receive_exactly(late, 4) == b"late"
        # Held bytes arrive in order: the target's push, then the echo of "ping".
        assert await receive_exactly(client, 8) == b"newsping"
        await round_trip(client, b"flowing")
        await proxy.wait_for(lambda p: p.held == 0)  # its count drops once send_all returns


async def test_cut_while_frozen_drops_what_was_held(proxy: TcpProxy, echo: EchoServer) -> None:
    async with await connect(proxy) as client:
        await round_trip(client, b"warm")
        proxy.freeze()
        await client.send_all(b"lost")
        await proxy.wait_for(lambda p: p.held == 4)
        proxy.cut()
        await assert_reset(client)
    await proxy.wait_for(lambda p: p.held == 0 and p.connections == 0)
    assert echo.received == b"warm"


async def test_a_target_that_is_down_gets_the_client_reset() -> None:
    with trio.socket.socket() as placeholder:  # a port nothing listens on
        await placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        async with open_tcp_proxy("127.0.0.1", port) as proxy, await connect(proxy) as client:
            await assert_reset(client)
