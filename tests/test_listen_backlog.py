"""A burst of connections larger than hypercorn's default backlog (100) waits in the kernel's
accept queue for a stalled server, instead of having its SYNs dropped (the clients' TCP would
try again only after 1, 3, 7, 15 s ...: a reconnect storm's stragglers).

The server is stopped (SIGSTOP), which is what a node busy with a storm looks like to the
kernel: nothing is accepted. What the kernel completes then is what the backlog holds."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

from tests.helpers.process import vpiska_process

BURST = 1000  # well over hypercorn's 100, under the kernel's default somaxconn (4096)
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


async def test_a_burst_of_connections_waits_for_a_stalled_server_and_is_served(
        tmp_path: Path) -> None:
    assert int(SOMAXCONN.read_text()) >= BURST, (  # noqa: ASYNC240 (a /proc read)
        "net.core.somaxconn caps the listen backlog below this test's burst")
    async with vpiska_process(tmp_path) as server:
        os.kill(server.process.pid, signal.SIGSTOP)
        streams: list[trio.SocketStream] = []
        try:
            async def connect() -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                streams.append(stream)
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: vpiska\r\n"
                                      b"Connection: close\r\n\r\n")

            # The kernel completes queued handshakes at once; a dropped SYN is retried after
            # 1 s and 3 s and dropped again while the server stays stopped.
            with trio.move_on_after(5):
                async with trio.open_nursery() as nursery:
                    for _ in range(BURST):
                        nursery.start_soon(connect)
            assert len(streams) == BURST, f"only {len(streams)} of {BURST} connected"
        finally:
            os.kill(server.process.pid, signal.SIGCONT)

        answered = 0

        async def read(stream: trio.SocketStream) -> None:
            nonlocal answered
            response = b""
            async with stream:
                while chunk := await stream.receive_some():
                    response += chunk
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
            answered += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for stream in streams:
                    nursery.start_soon(read, stream)
        assert answered == BURST
