"""One open WebSocket of a user in an event, as the room sees it: an identity and an outbox.

The room never awaits a socket. `deliver` either writes a frame to the socket at once (the
DirectSink fast path, when nothing of this member's is queued or being written) or puts it in
the outbox with `send_nowait` for the socket's writer task, which drains it. A full outbox means
the consumer is too slow; the room then `kick`s the member, which closes the outbox and records
the close code the writer must use.
"""

from __future__ import annotations

import enum

import trio

from vpiska.actors.frames import Frame
from vpiska.auth import Identity
from vpiska.http.hypercorn_adapter import DirectSink


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server sends (RFC 6455 and vpiska's 4xxx)."""

    NORMAL = 1000  # the event was closed by its owner
    GOING_AWAY = 1001  # the server is shutting down
    UNSUPPORTED_DATA = 1003  # a binary frame
    INTERNAL_ERROR = 1011  # the event's room failed beyond its restart limit
    SLOW_CONSUMER = 4008  # the member's outbox filled up: it does not read fast enough
    FLOODING = 4009  # the member kept sending chat lines over its rate limit


class Member:
    """Resource handling: the room owns `outbox` (the send side) and closes it on leave or kick;
    the session owns `frames` (the receive side)."""

    def __init__(self, identity: Identity, outbox_frames: int, sink: DirectSink | None = None,
                 *, hold: bool = False) -> None:
        self.identity = identity
        # With a sink the outbox carries wire bytes (whole frames or a frame's unwritten rest);
        # without one, frame texts for the ASGI path.
        self.outbox, self.frames = trio.open_memory_channel[bytes | str](outbox_frames)
        self.sink = sink
        # Items handed to the writer and not yet written. Direct writes wait for zero, so
        # frames never overtake each other; `hold` starts at one for a writer that must send
        # something first (the catch-up) and then calls `written(1)`.
        self.queued = 1 if hold else 0
        self.close_code = CloseCode.NORMAL
        self.kicked = False
        self.done = False  # the room will deliver nothing more

    def form(self, frame: Frame) -> bytes | str:
        """What the writer sends for `frame`: wire bytes with a sink, the text without."""
        return frame.text if self.sink is None else frame.wire

    def deliver(self, frame: Frame) -> None:
        """Send `frame` now or queue it. Raises trio.WouldBlock when the outbox is full, and
        Broken/ClosedResourceError when the session is gone."""
        if self.sink is None:
            self.outbox.send_nowait(self.form(frame))
        else:
            data = frame.wire
            if self.queued == 0:
                written = self.sink.write_now(data)
                if written == len(data):
                    return
                data = data[written:]
            self.outbox.send_nowait(data)
        self.queued += 1

    def written(self, items: int) -> None:
        """The writer has written `items` queued items."""
        self.queued -= items

    def kick(self, code: CloseCode) -> None:
        """Stop delivery now: the writer sends nothing more and closes with `code`."""
        self.kicked = True
        self.finish(code)

    def finish(self, code: CloseCode) -> None:
        """Stop delivery after what is queued: the writer drains, then closes with `code`."""
        if not self.done:
            self.done = True
            self.close_code = code
            self.outbox.close()
