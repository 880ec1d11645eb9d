"""A member's socket as an `Outbox` (vpiska/actors/member.py): how frames reach the wire.

The room delivers a frame without ever waiting. Here that becomes the cheapest write the socket
allows:

- With a `DirectSink` (the hypercorn adapter's plain TCP sockets), the frame's WebSocket bytes
  are built once per broadcast (`wire_bytes`, cached on the frame) and, when nothing of this
  socket's is queued or being written, written at once from the room's task: no task switch.
- Otherwise the frame is queued for the socket's writer task (`write_to`), which sends
  everything queued in one go. A count of items handed to the writer and not yet written keeps
  direct writes from overtaking queued ones.
- A socket that joined with `since` starts held (one item in flight that is not there): frames
  queue behind its catch-up lines until the writer `release`s it.

The queue is bounded; a full one is the room's sign of a slow consumer (OutboxFull).

Resource handling: the outbox owns its queue. `finish`/`abort` close it for the writer; the
session calls `close` when the socket is done, after which nothing is queued or written.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Awaitable, Callable

import trio

from vpiska.actors.frames import Frame
from vpiska.actors.member import CloseCode, OutboxClosed, OutboxFull
from vpiska.http.hypercorn_adapter import DirectSink

# Items one write may carry: large enough to amortise a send, small enough to keep it short.
MAX_WRITE_BATCH = 256

Item = bytes | str  # wire bytes with a sink, frame text for the ASGI path


class OutboxState(enum.Enum):
    OPEN = "open"  # takes frames
    FINISHING = "finishing"  # takes no more; the writer sends what is queued, then closes
    ABORTED = "aborted"  # takes no more; the writer drops what is queued and closes at once
    CLOSED = "closed"  # the socket is done (or its connection broke): nothing more is written


def wire_bytes(frame: Frame) -> bytes:
    """`frame` as a server sends it: FIN + text opcode, unmasked length, UTF-8 payload.
    Built once per frame and kept on it for every other socket of the broadcast."""
    if frame.encoded is None:
        payload = frame.text.encode()
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x81, size)
        elif size < 65536:
            header = struct.pack("!BBH", 0x81, 126, size)
        else:
            header = struct.pack("!BBQ", 0x81, 127, size)
        frame.encoded = header + payload
    return frame.encoded


class SocketOutbox:
    def __init__(self, capacity: int, sink: DirectSink | None, *, hold: bool = False) -> None:
        self._queue_in, self._queue = trio.open_memory_channel[Item](capacity)
        self._sink = sink
        self._in_flight = 1 if hold else 0
        self.state = OutboxState.OPEN
        self.close_code = CloseCode.NORMAL

    def form(self, frame: Frame) -> Item:
        """What the writer sends for `frame`."""
        return frame.text if self._sink is None else wire_bytes(frame)

    def deliver(self, frame: Frame) -> None:
        if self.state is not OutboxState.OPEN:
            raise OutboxClosed
        item = self.form(frame)
        if self._sink is not None and self._in_flight == 0:
            assert isinstance(item, bytes)
            try:
                written = self._sink.write_now(item)
            except trio.BrokenResourceError:
                self.close()
                raise OutboxClosed from None
            if written == len(item):
                return
            item = item[written:]
        try:
            self._queue_in.send_nowait(item)
        except trio.WouldBlock:
            raise OutboxFull from None
        self._in_flight += 1

    def finish(self, code: CloseCode) -> None:
        if self.state is OutboxState.OPEN:
            self.state = OutboxState.FINISHING
            self.close_code = code
            self._queue_in.close()

    def abort(self, code: CloseCode) -> None:
        if self.state in (OutboxState.OPEN, OutboxState.FINISHING):
            self.state = OutboxState.ABORTED
            self.close_code = code
            self._queue_in.close()

    def close(self) -> None:
        """The socket is done: take nothing more (the room sees OutboxClosed)."""
        self.state = OutboxState.CLOSED
        self._queue_in.close()

    def release(self) -> None:
        """End the hold a socket joined with: queued frames may go out, direct writes follow."""
        self._in_flight -= 1

    async def write_to(self, send: Callable[[list[Item]], Awaitable[None]]) -> None:
        """The writer: send queued items in batches until the outbox is finished, aborted or
        closed. `send` writes one batch to the socket."""
        async for first in self._queue:
            batch = [first]
            while len(batch) < MAX_WRITE_BATCH:  # everything queued goes out in one send
                try:
                    batch.append(self._queue.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):  # the loop sees the end next
                    break
            if self.state is OutboxState.ABORTED or self.state is OutboxState.CLOSED:
                return
            await send(batch)
            self._in_flight -= len(batch)
