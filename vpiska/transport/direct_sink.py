"""A member's frames written straight to its socket on hypercorn's WebSocket path.

Sending one frame through ASGI costs a task wake-up, a lock and a shielded cancel scope; for a
broadcast to N members that is N of each per line. A `DirectSink` lets a member's frames go to
its socket in one non-blocking write when nothing else is queued or being sent on that
connection, and lets the member's writer send everything queued with one send. Frames are
complete WebSocket frames (vpiska/http/outbox.py), written in order with hypercorn's own sends;
wsproto keeps owning the handshake, control frames and the close.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from hypercorn.events import Event, RawData
from hypercorn.protocol.ws_stream import WSStream
from wsproto.connection import ConnectionState

from vpiska.transport.socket_io import write_now


@dataclass(frozen=True, slots=True)
class PlainSocket:
    """A connection's plain TCP socket and how to write to it in order with the connection's
    other sends: what a WebSocket needs to write its frames and pings itself."""

    sock: trio.socket.SocketType
    send_lock: trio.Lock  # held while a send is under way (tcp_server.py `send_raw`)
    send: Callable[[Event], Awaitable[None]]  # the connection's `protocol_send`


class DirectSink:
    """Writes whole WebSocket frames to one connection, in order with hypercorn's own sends.

    Resource handling: owns nothing; it stops writing once the WebSocket is no longer OPEN or
    the socket is closed, and hypercorn closes the connection as usual.
    """

    def __init__(self, stream: WSStream, socket: PlainSocket) -> None:
        self._stream = stream
        self._sock = socket.sock
        self._send_lock = socket.send_lock
        self._send = socket.send

    def write_now(self, data: bytes) -> int:
        if (self._stream.closed or self._send_lock.locked()
                or self._stream.connection.state is not ConnectionState.OPEN):
            return 0
        return write_now(self._sock, data)

    async def send_frames(self, data: bytes) -> None:
        if self._stream.connection.state is ConnectionState.OPEN:
            await self._send(RawData(data=data))

    def spawn(self, job: Callable[[], Awaitable[None]]) -> None:
        self._stream.task_group.spawn(job)
