"""One open WebSocket of a user in an event, as the room sees it: an identity and an outbox.

The room never awaits a socket: it puts frames in the outbox with `send_nowait`, and the
socket's writer task drains it. A full outbox means the consumer is too slow; the room then
`kick`s the member, which closes the outbox and records the close code the writer must use.
"""

from __future__ import annotations

import enum

import trio

from vpiska.auth import Identity


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

    def __init__(self, identity: Identity, outbox_frames: int) -> None:
        self.identity = identity
        self.outbox, self.frames = trio.open_memory_channel[str](outbox_frames)
        self.close_code = CloseCode.NORMAL
        self.kicked = False
        self.done = False  # the room will deliver nothing more

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
