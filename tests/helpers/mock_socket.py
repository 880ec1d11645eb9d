"""A fake socket for transport tests over trio.testing.memory_stream_pair."""

from __future__ import annotations

import socket


class MockSocket:
    """What hypercorn's TCPServer asks of a connection's socket (its family and addresses), for
    a connection over trio.testing.memory_stream_pair, as hypercorn's own tests/helpers.py."""

    family = socket.AF_INET

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 50000)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 5000)
