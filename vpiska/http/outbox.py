"""A member's socket as an `Outbox` (vpiska/actors/member.py): how frames reach the wire.

The room delivers a frame without ever waiting. Here that becomes the cheapest write the socket
allows:

- With a `Sink` (vpiska/sink.py: the transport's plain TCP sockets), the frame's WebSocket bytes
  are built once per broadcast (`wire_bytes`, cached on the frame) and, when nothing of this
  socket's is queued or being written, written at once from the room's task: no task switch.
- Otherwise the frame is queued, and the session's writer sends everything queued in one go.
  A writer runs only while there is something to write (`wake` starts one): an idle socket has
  no task of its own besides its reader. A count of items queued or being written and not yet
  written keeps direct writes from overtaking queued ones.
- A socket that joined with `since` starts held (one item in flight that is not there): frames
  queue behind its catch-up lines until the writer `release`s it.

The queue is bounded; a full one is the room's sign of a slow consumer (OutboxFull).

Resource handling: the outbox owns its queue. `finish`/`abort` close it for the writer; the
session calls `close` when the socket is done, after which nothing is queued or written.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence

import trio

from vpiska.actors.frames import Frame
from vpiska.actors.member import CloseCode, OutboxClosed, OutboxFull
from vpiska.sink import Sink

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
    def __init__(self, capacity: int, sink: Sink | None, *, hold: bool = False) -> None:
        self._queue: list[Item] = []  # a list: an empty deque costs an idle socket 600 bytes
        self._capacity = capacity
        self._sink = sink
        self._in_flight = 1 if hold else 0
        self.state = OutboxState.OPEN
        self.close_code = CloseCode.NORMAL
        # Called when the writer has something to do: queued items, or the end to tell.
        self.wake: Callable[[], None] = _nothing

    def form(self, frame: Frame) -> Item:
        """What the writer sends for `frame`."""
        return frame.text if self._sink is None else wire_bytes(frame)

    def deliver(self, frame: Frame) -> None:
        if self.state is not OutboxState.OPEN:
            raise OutboxClosed
        self._put(self.form(frame))

    def deliver_all(self, frames: Sequence[Frame]) -> None:
        if len(frames) == 1 or self._sink is None or self._in_flight:
            for frame in frames:
                self.deliver(frame)
            return
        if self.state is not OutboxState.OPEN:
            raise OutboxClosed
        # What a direct write leaves unwritten is queued as one item: at most a batch of
        # frames more than the capacity counts, and a batch is bounded by the event's inbox.
        self._put(b"".join(map(wire_bytes, frames)))

    def _put(self, item: Item) -> None:
        if self._sink is not None and self._in_flight == 0:
            assert isinstance(item, bytes)
            try:
                written = self._sink.write_now(item)
            except trio.BrokenResourceError:
                self.close()
                self.wake()  # the writer ends the session
                raise OutboxClosed from None
            if written == len(item):
                return
            item = item[written:]
        if len(self._queue) >= self._capacity:
            raise OutboxFull
        self._queue.append(item)
        self._in_flight += 1
        self.wake()

    def finish(self, code: CloseCode) -> None:
        if self.state is OutboxState.OPEN:
            self.state = OutboxState.FINISHING
            self.close_code = code
            self.wake()

    def abort(self, code: CloseCode) -> None:
        if self.state in (OutboxState.OPEN, OutboxState.FINISHING):
            self.state = OutboxState.ABORTED
            self.close_code = code
            self._queue.clear()
            self.wake()

    def close(self) -> None:
        """The socket is done: take nothing more (the room sees OutboxClosed)."""
        self.state = OutboxState.CLOSED
        self._queue.clear()

    def release(self) -> None:
        """End the hold a socket joined with: queued frames may go out, direct writes follow."""
        self._in_flight -= 1

    @property
    def pending(self) -> bool:
        """Items are queued for the writer."""
        return bool(self._queue)

    def take(self) -> list[Item]:
        """For the writer: what is queued, at most MAX_WRITE_BATCH items, to send in one go."""
        batch = self._queue[:MAX_WRITE_BATCH]
        del self._queue[:MAX_WRITE_BATCH]
        return batch

    def written(self, count: int) -> None:
        """For the writer: `count` items taken have been written."""
        self._in_flight -= count


def _nothing() -> None:
    pass
