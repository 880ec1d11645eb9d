"""Reading and writing a non-blocking socket without waiting: the transport's fast paths.

trio's stream and socket layers cost two context managers and a conflict detector per read and
a lock and a shielded cancel scope per write. When the socket has the bytes, or the room for
them, none of that is needed: these functions touch the file descriptor itself, and the caller
waits with trio (wait_readable, or a send under the connection's lock) only when it must.
"""

from __future__ import annotations

import os

import trio
from hypercorn.trio.tcp_server import MAX_RECV


def write_now(sock: trio.socket.SocketType, data: bytes) -> int:
    """Write to a non-blocking socket what it takes at once: 0 if its buffer is full or it is
    closed; trio.BrokenResourceError if the connection has broken (the peer reset it)."""
    fd = sock.fileno()
    if fd < 0 or not data:
        return 0
    try:
        return os.write(fd, data)
    except BlockingIOError:  # the socket's buffer is full: the caller waits for room
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(exc) from exc


def read_ready(sock: trio.socket.SocketType) -> bytes | None:
    """What the socket holds now, without waiting (and without a deadline to set): None if
    nothing yet; b"" at the end of the stream, or if the connection broke or closed."""
    try:
        return os.read(sock.fileno(), MAX_RECV)
    except BlockingIOError:
        return None
    except OSError:
        return b""
