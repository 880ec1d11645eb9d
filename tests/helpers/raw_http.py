"""HTTP/1.1 by hand on a bare TCP connection, for what a well-behaved client never sends
(broken framing, bodies that stop, bytes after a close), and reads bounded by DEADLINE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

JSON = b"Content-Type: application/json\r\n"
DEADLINE = 15  # seconds a client waits for anything it expects


def request(target: str = "/healthz", method: str = "GET", headers: bytes = b"",
            body: bytes = b"") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + headers + b"\r\n"
            + body)


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[trio.SocketStream]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        yield stream
    finally:
        await trio.aclose_forcefully(stream)


async def first_bytes(stream: trio.SocketStream) -> bytes:
    """What the server sends next; b"" if it closed (or reset) the connection instead."""
    with trio.fail_after(DEADLINE):
        try:
            return bytes(await stream.receive_some(65536))
        except trio.BrokenResourceError:
            return b""


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection, within DEADLINE."""
    received = b""
    with trio.fail_after(DEADLINE):
        while chunk := await first_bytes(stream):
            received += chunk
    return received
