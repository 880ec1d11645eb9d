"""Writing to a non-blocking socket without waiting: what the adapter's fast write paths share
(hypercorn_adapter.py 5, 12, 15; direct_websocket.py)."""

from __future__ import annotations

import os

import trio


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
