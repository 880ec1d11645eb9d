"""What the wire needs of the live events, whether they run here or on another node.

On a single node the EventSupervisor is `Rooms` and every room is a local `Room`. In a cluster
(vpiska/cluster) `Rooms` is the node, and a room owned by another node is a gateway to it with
the same interface, so vpiska/http cannot tell the two apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from vpiska.actors.commands import Command, Reply
from vpiska.actors.geo import Spot
from vpiska.actors.member import Member
from vpiska.domain import Coordinates, Event
from vpiska.errors import DomainError, ErrorCode, RoomMoved
from vpiska.metrics import LiveStats

# How many times a command is asked in all when the room refuses it as moved
# (`ask_where_it_runs`): the room that refused it may be the one `find` gives until it has ended
# here, and the event's next node serves the third; a fourth would need a second move within
# one request.
MOVED_ASKS = 3


class RoomHandle(Protocol):
    event_id: str
    owner_id: str  # the user who owns the event
    failed: bool  # past its restart limit: it answers InternalError, sockets get 1011
    banned: set[str]  # users the host banned: their handshakes get 403

    async def ask(self, make: Callable[[Reply], Command]) -> object:
        """Send `make(reply)`, return its answer or raise its DomainError (Room.ask)."""

    async def send(self, command: Command) -> bool:
        """Queue a command that needs no answer; False if the room is overloaded."""

    async def enter(self, member: Member) -> None:
        """Join `member`, as Join does, without waiting for its `Joined` if the room need not
        (Room.enter); DomainError as `ask`."""

    def leave(self, member: Member) -> None:
        """Take `member` out of the room, never waiting."""


class Rooms(Protocol):
    @property
    def stopping(self) -> bool:
        """Shutting down: no event is opened, no socket joins."""

    @property
    def ready(self) -> bool:
        """Able to serve events (in a cluster: Redis answers); GET /readyz says so."""

    async def find(self, event_id: str) -> RoomHandle | None:
        """The room of an open event; None if it is unknown or closed."""

    async def open_event(self, owner_id: str, name: str, address: str,
                         coordinates: Coordinates) -> Event:
        """Store a new open event and start its room (OwnerAlreadyHasEvent, InternalError
        while stopping)."""

    def in_range(self, x_low: float, x_high: float, y_low: float, y_high: float) -> list[Spot]:
        """Open events in the rectangle, oldest first."""

    def users_count(self, event_id: str) -> int:
        """Distinct users connected to the event (0 if unknown)."""

    async def close_account(self, user_id: str) -> None:
        """Close every socket of `user_id`, on every node, with 4004 (their account was
        deleted); in a cluster the other nodes also forget the account (`Accounts.forget`)."""

    def live_stats(self) -> LiveStats:
        """This node's rooms and sockets, for GET /metrics."""


async def ask_where_it_runs(rooms: Rooms, room: RoomHandle,
                            make: Callable[[Reply], Command]) -> object:
    """`room.ask(make)`, asked again of the room `rooms` finds now when the room refused the
    command as moved to another node (RoomMoved: handed over, or fenced, before it handled the
    command): a request that came during a deploy is served where the event went.

    Error handling: as RoomHandle.ask; EventNotFound if the event closed meanwhile."""
    for _ in range(MOVED_ASKS - 1):
        try:
            return await room.ask(make)
        except RoomMoved:
            found = await rooms.find(room.event_id)
            if found is None:
                raise DomainError(ErrorCode.EVENT_NOT_FOUND) from None
            room = found
    return await room.ask(make)
