"""A member: one open socket of a user in an event, as the room sees it.

The room needs three things of a socket, and nothing else: deliver a frame without waiting,
close it after what is queued, close it now. That is the `Outbox` interface; the transport
(vpiska/http/outbox.py) implements it with whatever it takes to write quickly, and unit tests
implement it with a list.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Protocol

from vpiska.actors.frames import Frame
from vpiska.domain import Identity


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server sends (RFC 6455 and vpiska's 4xxx)."""

    NORMAL = 1000  # the event was closed by its owner
    GOING_AWAY = 1001  # the server is shutting down
    UNSUPPORTED_DATA = 1003  # a binary frame
    INTERNAL_ERROR = 1011  # the event's room failed beyond its restart limit
    SERVICE_RESTART = 1012  # the event moved to another node: reconnect
    TRY_AGAIN_LATER = 1013  # the event's inbox stayed full: the room is overloaded
    REMOVED = 4003  # the host removed the member from the event (events/members/remove)
    ACCOUNT_DELETED = 4004  # the member's account was deleted (users/delete)
    SLOW_CONSUMER = 4008  # the member's outbox filled up: it does not read fast enough
    FLOODING = 4009  # the member kept sending chat lines over its rate limit


class OutboxFull(Exception):
    """The socket has fallen too far behind: the member is a slow consumer."""


class OutboxClosed(Exception):
    """The socket is finished or gone; it takes no more frames."""


class Outbox(Protocol):
    def deliver(self, frame: Frame) -> None:
        """Send `frame` now or queue it, never waiting.

        Raises OutboxFull when the queue is full, OutboxClosed when the socket is finished or
        its connection is gone.
        """

    def deliver_all(self, frames: Sequence[Frame]) -> None:
        """`deliver` each of `frames`, in order; in one write when the socket can take them
        at once, so a batch of chat lines costs a member one send, not one per line."""

    def finish(self, code: CloseCode) -> None:
        """Take no more frames; close with `code` once the queued ones are written.
        A no-op when already finished."""

    def abort(self, code: CloseCode) -> None:
        """Take no more frames and drop the queued ones; close with `code` at once."""


# eq=False: members are told apart by identity (two devices of one user). slots: one per open
# socket, for as long as it is open; weakref_slot: tests see a closed room's members freed.
@dataclasses.dataclass(eq=False, slots=True, weakref_slot=True)
class Member:
    identity: Identity
    outbox: Outbox
    # The node whose socket this is, when not this one (vpiska/cluster): the room counts it,
    # and its frames reach it through the room's publisher, not through `outbox`.
    gateway: str | None = None
    # The wire protocol the socket speaks: 1, the older backend's, or 2 (`&v=2`, API.md's
    # "Opt-in room features"). It decides which frames of a broadcast it is shown (Frame.audience).
    version: int = 1
