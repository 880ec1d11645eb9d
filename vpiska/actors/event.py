"""EventActor: the one task that applies every change to one open event, in one order.

It owns the event's fields, media list, chat numbering and (through its Room) the live members.
Commands come one at a time from the room's inbox, so there are no locks, and every member sees
frames in the order the actor applied them.

Persist, then announce: each change is written to the store first; only then is its frame
broadcast and the caller answered. A frame a member has seen is therefore never missing after
a crash and restart.

Chat lines use group commit: lines that arrive while one store write is in flight queue up in
the inbox and go into the next single write, so a busy room costs one write per batch.

Count-only `eventUpdated` frames (joins and leaves) are coalesced to at most one per
`event_update_interval_ms`, carrying the latest count: announcing every join to every member
would cost N² frames when N people arrive at once.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from collections.abc import Awaitable, Callable

import outcome
import trio

from vpiska import metrics
from vpiska.actors import frames
from vpiska.actors.commands import (
    AddMedia,
    Chat,
    Close,
    Command,
    Join,
    Leave,
    RemoveMedia,
    Reply,
    Snapshot,
    Stop,
    Update,
)
from vpiska.actors.geo import MapIndex
from vpiska.actors.member import CloseCode, Member
from vpiska.actors.room import Room
from vpiska.config import Config
from vpiska.domain import ChatMessage, Event
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import Store

log = logging.getLogger(__name__)

# Upper bound of one group-commit write; a room with more queued lines writes several batches.
MAX_CHAT_BATCH = 500


class Exit(enum.Enum):
    CLOSED = "closed"  # the owner closed the event
    STOPPED = "stopped"  # the server is shutting down


@dataclasses.dataclass(frozen=True)
class EventView:
    """The event as `events/get` shows it, minus the chat lines (read from the store)."""

    event: Event
    users_count: int
    chat_length: int


class EventActor:
    """One incarnation of an event's actor; the supervisor starts another if it crashes.

    Resource handling: the actor closes every reply channel it takes, answered or not, and on
    Close or Stop it closes every member's outbox. It never awaits a socket.

    Error handling: refusals (not the owner, unknown media) are answered as DomainErrors.
    Anything else (a store failure, a bug) escapes `run` and the supervisor decides.
    """

    def __init__(self, room: Room, event: Event, chat_length: int, store: Store,
                 index: MapIndex, config: Config) -> None:
        self._room = room
        self._event = event
        self._chat_length = chat_length
        self._store = store
        self._index = index
        self._update_interval = config.event_update_interval_ms / 1000
        self._announced_count = room.users_count
        self._next_count_at = -math.inf

    async def run(self) -> Exit:
        taken: Command | None = None  # a command read while gathering a chat batch
        while True:
            command = taken if taken is not None else await self._next_command()
            taken = None
            if command is None:  # the coalescing deadline passed
                self._announce_count()
                continue
            if isinstance(command, Chat):
                batch = [command]
                while len(batch) < MAX_CHAT_BATCH:
                    try:
                        following = self._room.commands.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if isinstance(following, Chat):
                        batch.append(following)
                    else:
                        taken = following
                        break
                await self._chat(batch)
            elif isinstance(command, Join):
                await self._answer(command.reply, self._join, command.member)
            elif isinstance(command, Leave):
                self._leave(command.member)
            elif isinstance(command, Snapshot):
                await self._answer(command.reply, self._snapshot)
            elif isinstance(command, Update):
                await self._answer(command.reply, self._update, command)
            elif isinstance(command, AddMedia):
                await self._answer(command.reply, self._add_media, command)
            elif isinstance(command, RemoveMedia):
                await self._answer(command.reply, self._remove_media, command)
            elif isinstance(command, Close):
                await self._answer(command.reply, self._close, command)
                if not self._event.is_open:
                    return Exit.CLOSED
            elif isinstance(command, Stop):
                self._room.finish_members(CloseCode.GOING_AWAY)
                return Exit.STOPPED
            else:
                raise TypeError(f"EventActor got {command!r}; expected one of commands.Command")
            self._announce_count_if_due()

    async def _next_command(self) -> Command | None:
        due = self._next_count_at if self._room.users_count != self._announced_count else math.inf
        with trio.move_on_at(due):
            return await self._room.commands.receive()
        return None

    @staticmethod
    async def _answer(reply: Reply, handler: Callable[..., Awaitable[object]],
                      *args: object) -> None:
        with reply:  # closed on every way out, so the caller never waits on a crashed actor
            try:
                result: outcome.Outcome[object] = outcome.Value(await handler(*args))
            except DomainError as refusal:
                result = outcome.Error(refusal)
            try:
                reply.send_nowait(result)
            except trio.BrokenResourceError:
                pass  # the caller gave up waiting; the change itself stands

    # Membership.

    async def _join(self, member: Member) -> int:
        self._room.members.setdefault(member.identity.user_id, set()).add(member)
        return self._chat_length

    def _leave(self, member: Member) -> None:
        self._remove(member)
        member.finish(member.close_code)  # a no-op if the room already finished it

    def _remove(self, member: Member) -> None:
        sockets = self._room.members.get(member.identity.user_id)
        if sockets is not None:
            sockets.discard(member)
            if not sockets:
                del self._room.members[member.identity.user_id]

    def _announce_count_if_due(self) -> None:
        if (self._room.users_count != self._announced_count
                and trio.current_time() >= self._next_count_at):
            self._announce_count()

    def _announce_count(self) -> None:
        self._broadcast(self._event_updated())
        self._next_count_at = trio.current_time() + self._update_interval

    def _event_updated(self) -> frames.Frame:
        e = self._event
        self._announced_count = self._room.users_count
        return frames.event_updated(e.id, e.name, e.address, self._announced_count,
                                    e.coordinates)

    def _broadcast(self, frame: frames.Frame) -> None:
        """Deliver `frame` to every member; a member whose outbox is full is dropped (4008)."""
        slow: list[Member] = []
        delivered = 0
        for sockets in self._room.members.values():
            for member in sockets:
                try:
                    member.deliver(frame)
                    delivered += 1
                except trio.WouldBlock:
                    slow.append(member)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    slow.append(member)  # its session is gone; its Leave is on the way
        for member in slow:
            if not member.done:
                log.info("slow consumer disconnected",
                         extra={"event_id": self._event.id, "user_id": member.identity.user_id})
                member.kick(CloseCode.SLOW_CONSUMER)
                metrics.SLOW_CONSUMER_DISCONNECTS.inc()
            self._remove(member)
        metrics.FRAMES_SENT.inc(delivered)

    # Changes.

    async def _chat(self, batch: list[Chat]) -> None:
        lines = [ChatMessage(c.sender.user_id, c.sender.name, c.sender.image_id, c.text)
                 for c in batch]
        await self._store.append_chat(self._event.id, self._chat_length, lines)
        metrics.CHAT_BATCH_LINES.observe(len(lines))
        self._chat_length += len(lines)
        for line in lines:
            self._broadcast(frames.chat_message(line))

    async def _snapshot(self) -> EventView:
        return EventView(self._event, self._room.users_count, self._chat_length)

    def _check_owner(self, user_id: str) -> None:
        if user_id != self._event.owner_id:
            raise DomainError(ErrorCode.USER_IS_NOT_OWNER)

    async def _update(self, command: Update) -> None:
        self._check_owner(command.by)
        await self._store.update_event(self._event.id, command.address, command.coordinates)
        self._event = dataclasses.replace(self._event, address=command.address,
                                          coordinates=command.coordinates)
        self._index.move(self._event.id, command.coordinates)
        self._broadcast(self._event_updated())  # announced at once, with the current count

    async def _add_media(self, command: AddMedia) -> None:
        self._check_owner(command.by)
        await self._store.add_event_media(self._event.id, command.media)
        media = tuple(m for m in self._event.media if m.id != command.media.id)
        self._event = dataclasses.replace(self._event, media=(*media, command.media))
        self._broadcast(frames.media_added(command.media.id))

    async def _remove_media(self, command: RemoveMedia) -> None:
        self._check_owner(command.by)
        if not any(m.id == command.media_id for m in self._event.media):
            raise DomainError(ErrorCode.MEDIA_NOT_FOUND)
        await self._store.remove_event_media(self._event.id, command.media_id)
        self._event = dataclasses.replace(
            self._event, media=tuple(m for m in self._event.media if m.id != command.media_id))
        self._broadcast(frames.media_removed(command.media_id))

    async def _close(self, command: Close) -> None:
        self._check_owner(command.by)
        await self._store.close_event(self._event.id)
        self._event = dataclasses.replace(self._event, is_open=False)
        self._broadcast(frames.CLOSE_EVENT)
        self._room.finish_members(CloseCode.NORMAL)
