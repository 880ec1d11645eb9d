"""vpiska/transport/socket_io.py: reads and writes that never wait, on a local socket pair."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio

from vpiska.transport.socket_io import read_ready, write_now


@pytest.fixture
async def pair() -> AsyncIterator[tuple[trio.socket.SocketType, socket.socket]]:
    """The server's end (trio, non-blocking) and the peer's (a plain blocking socket)."""
    ours, theirs = socket.socketpair()
    server = trio.socket.from_stdlib_socket(ours)
    with server, theirs:
        yield server, theirs


async def test_what_the_socket_takes_is_written_at_once(
    pair: tuple[trio.socket.SocketType, socket.socket]
) -> None:
    server, peer = pair
    assert write_now(server, b"frame") == 5
    assert peer.recv(100) == b"frame"


async def test_a_full_socket_takes_part_then_nothing(
    pair: tuple[trio.socket.SocketType, socket.socket]
) -> None:
    server, _ = pair
    big = b"x" * 16 * 1024 * 1024
    written = write_now(server, big)
    assert 0 < written < len(big)
    assert write_now(server, big) == 0  # full: the caller waits for room


async def test_a_closed_socket_or_nothing_to_write_writes_nothing(
    pair: tuple[trio.socket.SocketType, socket.socket]
) -> None:
    server, _ = pair
    assert write_now(server, b"") == 0
    server.close()
    assert write_now(server, b"frame") == 0


async def test_a_reset_connection_is_broken_not_full(
    pair: tuple[trio.socket.SocketType, socket.socket]
) -> None:
    server, peer = pair
    peer.close()
    with pytest.raises(trio.BrokenResourceError):
        write_now(server, b"frame")


async def test_read_ready_tells_nothing_yet_from_the_end(
    pair: tuple[trio.socket.SocketType, socket.socket]
) -> None:
    server, peer = pair
    assert read_ready(server) is None
    peer.sendall(b"request")
    assert read_ready(server) == b"request"
    peer.shutdown(socket.SHUT_WR)
    assert read_ready(server) == b""
    server.close()
    assert read_ready(server) == b""
