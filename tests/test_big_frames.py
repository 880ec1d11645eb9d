"""A WebSocket message over WS_MAX_FRAME_BYTES is refused by its frame headers, unread.

hypercorn read such a frame whole before closing with 1009, and what it had buffered stayed
with the process: 30 frames of 10 MB took a server from 62 to 264 MB of RSS for good. The
transport refuses the message as soon as a header shows it too big
(vpiska/transport/frame_limits.py), so the close comes before the payload, and memory does not
grow. Stock hypercorn still buffers: its cases are expected to fail (xfail, strict).
"""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers.clients import Crowd, assert_still_serving, host_event, token_for
from tests.helpers.process import as_server, free_port, server_process
from tests.helpers.raw_http import DEADLINE
from tests.helpers.raw_ws import RawSocket, masked_frame, resource, until_closed
from tests.helpers.server import EVERY_WEBSOCKET_PATH, Server, port_of, stock_hypercorn_fails

MIB = 1024 * 1024
BIG = 10_000_000  # bytes of each oversized frame
CONNECTIONS = 30
RSS_GROWTH_LIMIT = 48 * MIB


def frame_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """The header of a masked client frame (zero mask) of `length` payload bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, 0x80 | length) + b"\0\0\0\0"
    if length < 65536:
        return struct.pack("!BBH", first, 0x80 | 126, length) + b"\0\0\0\0"
    return struct.pack("!BBQ", first, 0x80 | 127, length) + b"\0\0\0\0"


async def joined(server: Server) -> RawSocket:
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    return await RawSocket.connect(port_of(server), resource(server, token, event_id))


@stock_hypercorn_fails(
    "a message over websocket_max_message_size is read, unmasked and buffered whole before its "
    "1009: a header alone gets no answer")
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([frame_header(0x1, 64 * 1024 + 1)], id="one-frame-header"),
        pytest.param([frame_header(0x1, 2**62)], id="absurd-length"),
        pytest.param([masked_frame(0x1, b"chatMessage/" + b"a" * 40_000, fin=False),
                      masked_frame(0x9, b"ping between fragments"),
                      frame_header(0x0, 40_000, fin=False)], id="fragments-adding-up"),
        pytest.param([masked_frame(0x1, b"chatMessage/", fin=False),
                      *[masked_frame(0x0, b"a" * 30_000, fin=False)] * 2,
                      frame_header(0x0, 30_000)], id="many-fragments-adding-up"),
    ],
)
async def test_message_over_the_bound_is_refused_before_its_payload(
    server: Server, crowd: Crowd, frames: list[bytes]
) -> None:
    """Only headers are sent for the oversized part: the 1009 must come without its payload."""
    raw = await joined(server)
    async with raw.stream:
        await raw.stream.send_all(b"".join(frames))
        with trio.fail_after(DEADLINE):
            assert await raw.close_code() == 1009
            await until_closed(raw)  # and the server stopped reading it
    await assert_still_serving(server, crowd)


@EVERY_WEBSOCKET_PATH
async def test_fragmented_message_within_the_bound_is_delivered(
    server: Server, crowd: Crowd
) -> None:
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    listener = await crowd.join((await token_for(server))[1], event_id)
    raw = await RawSocket.connect(port_of(server), resource(server, token, event_id))
    async with raw.stream:
        line = b"chatMessage/" + b"b" * 1000
        await raw.stream.send_all(masked_frame(0x1, line[:500], fin=False)
                                  + masked_frame(0x9, b"ping")
                                  + masked_frame(0x0, line[500:900], fin=False)
                                  + masked_frame(0x0, line[900:]))
        await listener.wait_for(lambda m: m.chat() == ["b" * 1000])


@stock_hypercorn_fails(
    "permessage-deflate is accepted whenever a client offers it, though a frame's header gives "
    "only its compressed size (64 KiB inflate to 64 MiB)")
async def test_permessage_deflate_is_not_negotiated(server: Server, crowd: Crowd) -> None:
    """A frame's header gives its compressed size only (64 KiB inflate to 64 MiB), so the
    server declines compression, and a compressed frame is a protocol error."""
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    async with stream:
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(
            b"GET " + resource(server, token, event_id).encode() + b" HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
        raw = RawSocket(stream)
        with trio.fail_after(DEADLINE):
            while b"\r\n\r\n" not in raw.buffer:
                raw.buffer += await stream.receive_some(65536)
        head, raw.buffer = raw.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"sec-websocket-extensions" not in head.lower()
        compressed = bytes([0xC1]) + masked_frame(0x1, b"\xf2\x48\xcd\xc9\xc9\x07\x00")[1:]
        await stream.send_all(compressed)  # RSV1 set: "compressed" without the extension
        with trio.fail_after(DEADLINE):
            assert await raw.close_code() == 1002
    await assert_still_serving(server, crowd)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


async def oversized_frame(server: Server, token: str, event_id: str, payload: bytes) -> int:
    """Send one frame of `payload` on a new socket, all of it unless the server closes first;
    the close code the server answers with (after which it must close the connection)."""
    raw = await RawSocket.connect(port_of(server), resource(server, token, event_id))
    async with raw.stream:
        async def send() -> None:
            try:
                await raw.stream.send_all(frame_header(0x1, len(payload)) + payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the server closed without reading it all: the point

        async with trio.open_nursery() as nursery:  # the whole frame, or until refused
            nursery.start_soon(send)
            with trio.fail_after(DEADLINE):
                code = await raw.close_code()
        with trio.fail_after(DEADLINE):
            await until_closed(raw)
    return code


async def test_oversized_frames_do_not_grow_the_servers_memory(tmp_path: Path) -> None:
    port = free_port()
    payload = b"a" * BIG
    async with (server_process(tmp_path, port) as process,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
                as_server(tmp_path, port, http) as server):
        _, event_id = await host_event(server)
        _, token = await token_for(server)
        assert await oversized_frame(server, token, event_id, payload) == 1009  # warm-up
        before = rss_bytes(process.pid)
        for _ in range(CONNECTIONS):
            assert await oversized_frame(server, token, event_id, payload) == 1009
        after = rss_bytes(process.pid)
        print(f"\nserver RSS around {CONNECTIONS} frames of {BIG} bytes: "
              f"{before / MIB:.1f} MiB -> {after / MIB:.1f} MiB")
        assert after - before < RSS_GROWTH_LIMIT
        assert (await http.get("/healthz")).status_code == 200
