"""EventActor: the one task that applies every change to one open event, in one order.

It owns the event's fields, media list, chat numbering and (through its Room) the live members.
Commands come one at a time from the room's inbox, so there are no locks, and every member sees
frames in the order the actor applied them.

Persist, then announce: each change is written to the store first; only then is its frame
broadcast and the caller answered. A frame a member has seen is therefore never missing after
a crash and restart. In a cluster the room's mirror, where other nodes read the event, is
brought up to date in between (vpiska/actors/view.py).

Chat lines use group commit: lines that arrive while one store write is in flight queue up in
the inbox and go into the next single write, so a busy room costs one write per batch.

Count-only `eventUpdated` frames (joins and leaves) are coalesced to at most one per
`event_update_interval_ms`, carrying the latest count: announcing every join to every member would
cost N² frames when N people arrive at once. A room too large for that interval to cost at most
`count_frames_per_second` frames waits longer, members / that rate: a crowd of thousands arriving
would otherwise spend a good part of the core telling each other the count. A joining socket is sent
the current state at once, so a second device of a user (which changes no count) is not left without
it. Presence frames for v2 sockets (vpiska/actors/presence.py) are announced on the same schedule,
kept apart from the count's so that v1 sockets see the counts they always saw.

A command is checked against the domain's rules before it touches the store (valid text, finite
coordinates; the edge checks the same, so a client sees the field's code): a value no store or
wire could carry fails that command, never the room. What remains to crash the actor is a fault
of the room or of the store, which is what supervision is for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import outcome
import trio

from vpiska import metrics
from vpiska.actors import frames
from vpiska.actors import lines as chat_lines
from vpiska.actors.commands import (
    AddMedia,
    Chat,
    Close,
    Command,
    Join,
    Joined,
    Leave,
    Members,
    RemoveChat,
    RemoveMedia,
    RemoveMember,
    Reply,
    RereadChat,
    Snapshot,
    Stop,
    Update,
)
from vpiska.actors.frames import Audience
from vpiska.actors.geo import MapIndex
from vpiska.actors.map_publisher import UNSHARED_MAP, MapPublisher
from vpiska.actors.member import CloseCode, Member, OutboxClosed, OutboxFull
from vpiska.actors.room import Room
from vpiska.actors.view import EventView
from vpiska.config import Config
from vpiska.domain import ChatMessage, Event, Identity, is_place, is_text, utc_now_ms
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import Store

log = logging.getLogger(__name__)

# Upper bound of one group-commit write; a room with more queued lines writes several batches.
# Joins queued together are taken together too (one mirror write for all of them).
MAX_BATCH = 500
_Batched = TypeVar("_Batched", Chat, Join)


class Exit(enum.Enum):
    CLOSED = "closed"  # the owner closed the event
    STOPPED = "stopped"  # the server is shutting down


class EventActor:
    """One incarnation of an event's actor; the supervisor starts another if it crashes.

    Resource handling: the actor closes every reply channel it takes, answered or not, and on
    Close or Stop it closes every member's outbox. It never awaits a socket.

    Error handling: refusals (not the owner, unknown media, values the domain does not allow)
    are answered as DomainErrors. Anything else (a store failure, a bug) escapes `run` and the
    supervisor decides.

    `epoch`: the fencing epoch of this node's lease on the event, passed to every store write,
    so that once another node has claimed the event the store refuses them (StaleEpoch, which
    escapes `run` like any store error). None (one node, no lease): unfenced.

    `index` is this node's map; `map_publisher` tells the actor's moves and closes to whoever
    else keeps one (in a cluster, every other node).
    """

    def __init__(self, room: Room, event: Event, chat_length: int, store: Store,
                 index: MapIndex, config: Config, *, epoch: int | None = None,
                 map_publisher: MapPublisher = UNSHARED_MAP) -> None:
        self._room = room
        self._event = event
        self._event_updates = frames.EventUpdates()
        self._chat_length = chat_length
        self._store = store
        self._epoch = epoch
        self._index = index
        self._map_publisher = map_publisher
        self._update_interval = config.event_update_interval_ms / 1000
        self._count_frames_per_second = config.count_frames_per_second
        self._next_count_at = -math.inf
        self._next_presence_at = -math.inf
        # The chat as events/get shows it, kept from the first snapshot on so that later ones
        # ask nothing of the store; dropped for good once longer than the bound.
        self._chat_memory_lines = config.chat_memory_lines
        self._chat_json: list[str] | None = None
        # What the room's mirror holds: (event, usersCount, chat length), and how many chat
        # lines (vpiska/actors/view.py). A new incarnation mirrors everything again.
        self._mirrored: tuple[Event, int, int] | None = None
        self._mirrored_lines = 0
        # The ids of the last lines sent with one (`chat/`), read at the first such line
        # (`_client_ids`).
        self._ids: chat_lines.SentIds | None = None
        # A new owner in a cluster learns the other nodes' sockets, and their versions, only as
        # their gateways tell it (a sync, bounded by the reply deadline on the gateway's side,
        # or their sockets rejoin). Until then each line is shown to both versions. Not for
        # good: a v1 frame in its own audience is a message nodes before v2 cannot read.
        self._versions_unknown_until = -math.inf if room.publisher is None else (
            trio.current_time() + 2 * config.actor_reply_timeout_seconds)

    async def run(self) -> Exit:
        self._room.hello(self._chat_length)
        if self._room.mirror is not None:
            await self._snapshot()  # the chat, for the mirror, before the first answer
            await self._mirror_now()
        while True:
            # A command read ahead while gathering the last chat batch comes first (also when
            # that batch's write crashed the incarnation before this one).
            command, self._room.read_ahead = self._room.read_ahead, None
            if command is None:
                command = await self._next_command()
            if command is None:  # a coalescing deadline passed
                self._announce_count_if_due()
                self._announce_presence_if_due()
                continue
            if isinstance(command, Chat):
                await self._chat(self._gather(command, Chat))
            elif isinstance(command, Join):
                await self._join(self._gather(command, Join))
            elif isinstance(command, Leave):
                self._leave(command.member)
            elif isinstance(command, Snapshot):
                await self._answer(command.reply, self._snapshot)
            elif isinstance(command, Members):
                await self._answer(command.reply, self._members)
            elif isinstance(command, Update):
                await self._answer(command.reply, self._update, command)
            elif isinstance(command, AddMedia):
                await self._answer(command.reply, self._add_media, command)
            elif isinstance(command, RemoveMedia):
                await self._answer(command.reply, self._remove_media, command)
            elif isinstance(command, RemoveChat):
                await self._answer(command.reply, self._remove_chat, command)
            elif isinstance(command, RemoveMember):
                await self._answer(command.reply, self._remove_member, command)
            elif isinstance(command, RereadChat):
                await self._answer(command.reply, self._reread_chat)
            elif isinstance(command, Close):
                await self._answer(command.reply, self._close, command)
                if not self._event.is_open:
                    return Exit.CLOSED
            elif isinstance(command, Stop):
                if command.hand_over:
                    await self._hand_over(command)
                else:
                    self._room.finish_members(CloseCode.GOING_AWAY)
                return Exit.STOPPED
            else:
                raise TypeError(f"EventActor got {command!r}; expected one of commands.Command")
            self._room.remove_departed()
            await self._mirror_now()  # after a leave; before the count is announced
            self._announce_count_if_due()
            self._announce_presence_if_due()

    def _gather(self, first: _Batched, kind: type[_Batched]) -> list[_Batched]:
        """`first` and the commands of its kind queued right after it, up to MAX_BATCH."""
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                following = self._room.commands.receive_nowait()
            except trio.WouldBlock:
                break
            if isinstance(following, kind):
                batch.append(following)
            else:
                self._room.read_ahead = following  # handled next, even after a crash
                break
        return batch

    async def _next_command(self) -> Command | None:
        pending = self._room.users_count != self._room.announced_count
        due = self._next_count_at if pending else math.inf
        if self._room.presence.pending:
            due = min(due, self._next_presence_at)
        if due > trio.current_time():  # a command already queued needs no deadline to wait on
            try:
                return self._room.commands.receive_nowait()
            except trio.WouldBlock:
                pass
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

    async def _join(self, joins: list[Join]) -> None:
        with contextlib.ExitStack() as replies:  # closed on every way out, as in `_answer`
            for join in joins:
                if join.reply is not None:
                    replies.enter_context(join.reply)
                if join.member.identity.user_id not in self._room.banned:
                    self._room.add(join.member)
            await self._mirror_now()
            # The same state for all of them; none if the announcement after this command
            # tells everyone anyway.
            state = None if self._count_due() else self._event_updated()
            for join in joins:
                if join.member.identity.user_id in self._room.banned:
                    await self._answer_banned(join)
                elif join.reply is None:
                    await self._welcome(join.member, state)
                else:
                    await self._answer(join.reply, self._welcome, join.member, state)

    async def _welcome(self, member: Member, state: frames.Frame | None) -> Joined:
        if state is not None:
            try:
                member.outbox.deliver(state)
            except (OutboxFull, OutboxClosed):
                self._room.remove(member)  # gone already: its Leave is on the way
        return Joined(self._chat_length, self._room.seq)

    async def _answer_banned(self, join: Join) -> None:
        """A banned user's socket got past the handshake's check (banned meanwhile, or on a
        node that had not heard of the ban yet): closed with 4003, its join refused."""
        log.info("banned member turned away", extra={
            "event_id": self._event.id, "user_id": join.member.identity.user_id})
        join.member.outbox.finish(CloseCode.REMOVED)
        if join.reply is not None:
            await self._answer(join.reply, self._refuse_banned)
        elif join.member.gateway is not None:
            # A socket a gateway told a new owner of (sync): nobody waits for an answer.
            self._room.close_remote([join.member], CloseCode.REMOVED)

    @staticmethod
    async def _refuse_banned() -> None:
        raise DomainError(ErrorCode.EVENT_NOT_FOUND)

    def _leave(self, member: Member) -> None:
        self._room.remove(member)

    def _count_due(self) -> bool:
        return (self._room.users_count != self._room.announced_count
                and trio.current_time() >= self._next_count_at)

    def _announce_count_if_due(self) -> None:
        if self._count_due():
            self._announce_count()

    def _announce_count(self) -> None:
        count = self._room.users_count
        self._room.announce(self._event_updated(), count)
        self._next_count_at = trio.current_time() + self._announcement_interval()

    def _announce_presence_if_due(self) -> None:
        if self._room.presence.pending and trio.current_time() >= self._next_presence_at:
            self._room.announce_presence()
            self._next_presence_at = trio.current_time() + self._announcement_interval()

    def _announcement_interval(self) -> float:
        return max(self._update_interval, self._room.users_count / self._count_frames_per_second)

    async def _members(self) -> list[Identity]:
        return self._room.present()

    def _event_updated(self) -> frames.Frame:
        return self._event_updates.frame(self._event, self._room.users_count)

    # Changes: each is stored, then mirrored, then shown.

    async def _mirror_now(self) -> None:
        """Bring the room's mirror (a cluster's; none on one node) up to this actor's state."""
        mirror = self._room.mirror
        if mirror is None or self._epoch is None:
            return
        state = (self._event, self._room.users_count, self._chat_length)
        if state == self._mirrored:
            return
        chat = None if self._chat_json is None else tuple(self._chat_json)
        await mirror.show(self._epoch, EventView(*state, chat), self._mirrored_lines)
        self._mirrored = state
        self._mirrored_lines = 0 if chat is None else len(chat)

    async def _chat(self, batch: list[Chat]) -> None:
        sent_at = utc_now_ms()
        lines: list[ChatMessage] = []
        acks: list[tuple[Chat, int]] = []  # a line sent with an id, and its line's number
        for command in batch:
            line = ChatMessage(command.sender.user_id, command.sender.name,
                               command.sender.image_id, command.text, sent_at, command.client_id)
            if not self._storable(line):
                continue
            if command.client_id is None:
                lines.append(line)
                continue
            # Once per id and sender: a resend is answered with the first line's number.
            ids = await self._client_ids()
            key = (command.sender.user_id, command.client_id)
            if (index := ids.line(key, self._chat_length + len(lines))) is None:
                index = self._chat_length + len(lines)
                ids.add(key, index)
                lines.append(line)
            acks.append((command, index))
        if lines:
            await self._store_lines(lines)
        for command, index in acks:
            if command.member is not None:
                assert command.client_id is not None
                self._room.tell(command.member, chat_lines.ack(command.client_id, index + 1))

    async def _store_lines(self, lines: list[ChatMessage]) -> None:
        """Write `lines` as the chat's next ones (one write), then show them."""
        await self._store.append_chat(self._event.id, self._chat_length, lines, epoch=self._epoch)
        metrics.CHAT_BATCH_LINES.observe(len(lines))
        first = self._chat_length
        self._chat_length += len(lines)
        v2 = self._room.v2_members > 0 or trio.current_time() < self._versions_unknown_until
        if v2:
            numbered = [(frame, index) for index, line in enumerate(lines, start=first)
                        for frame in chat_lines.shown(line, index + 1, v2=True)]
            shown = [frame for frame, _ in numbered if frame.audience is not Audience.V2]
        else:
            shown = [frames.chat_message(line) for line in lines]
        if self._chat_json is not None:
            self._chat_json.extend(map(frames.payload, shown))
        if self._chat_json is not None and len(self._chat_json) > self._chat_memory_lines:
            self._chat_json = None
        await self._mirror_now()
        if v2:
            self._room.broadcast_numbered(numbered)
        else:
            self._room.broadcast_lines(shown, first)

    async def _client_ids(self) -> chat_lines.SentIds:
        """The last lines sent with an id: read from the store at this incarnation's first,
        then kept current here (this actor is the event's only writer)."""
        if self._ids is None:
            start = chat_lines.SentIds.first_remembered(self._chat_length)
            self._ids = chat_lines.SentIds(
                await self._store.chat_client_ids(self._event.id, start))
        return self._ids

    async def _hand_over(self, stop: Stop) -> None:
        """Write the chat lines queued behind the Stop, then end the room here: its sockets
        on this node close with 1012, the other nodes' stay for the next owner.

        Only the lines queued when the actor takes the Stop: sockets talk until they see the
        Handover, and a room that wrote until its inbox was empty wrote for as long as they
        talked (until the next owner fenced it, losing its last lines, or the shutdown's grace
        ran out). From then on a line from another node is not queued here (`handing_over`):
        the node sends it on to the next owner. Other commands behind the Stop are refused,
        as the room that ends refuses them; so are this node's sockets' later lines (their
        sockets close with 1012 and were never answered)."""
        self._room.handing_over = True
        self._room.read_ahead = stop  # a crash in the writes below hands over again
        lines: list[Chat] = []
        for _ in range(self._room.commands.statistics().current_buffer_used):
            try:
                command = self._room.commands.receive_nowait()
            except trio.WouldBlock:
                break
            if isinstance(command, Chat):
                lines.append(command)
            else:
                self._room.refuse(command, CloseCode.SERVICE_RESTART)
        for start in range(0, len(lines), MAX_BATCH):
            await self._chat(lines[start:start + MAX_BATCH])
        self._room.read_ahead = None
        self._room.hand_over(CloseCode.SERVICE_RESTART)

    def _storable(self, line: ChatMessage) -> bool:
        if all(map(is_text, (line.user_id, line.user_name, line.user_image_id, line.message))):
            return True
        log.warning("chat line dropped: not valid text",
                    extra={"event_id": self._event.id, "user_id": line.user_id[:64]})
        return False

    async def _snapshot(self) -> EventView:
        if self._chat_json is None and self._chat_length <= self._chat_memory_lines:
            lines = await self._store.chat(self._event.id)  # once: appends keep it current
            self._chat_json = [frames.payload(frames.chat_message(line))
                               for line in lines[: self._chat_length]]
        chat = None if self._chat_json is None else tuple(self._chat_json)
        return EventView(self._event, self._room.users_count, self._chat_length, chat)

    def _check_owner(self, user_id: str) -> None:
        if user_id != self._event.owner_id:
            raise DomainError(ErrorCode.USER_IS_NOT_OWNER)

    async def _update(self, command: Update) -> None:
        self._check_owner(command.by)
        codes = [code for failed, code in (
            (not command.address or not is_text(command.address), ErrorCode.ADDRESS_IS_EMPTY),
            (not is_place(command.coordinates), ErrorCode.COORDINATES_IS_EMPTY)) if failed]
        if codes:
            raise DomainError(*codes)
        await self._store.update_event(self._event.id, command.address, command.coordinates,
                                       epoch=self._epoch)
        self._event = dataclasses.replace(self._event, address=command.address,
                                          coordinates=command.coordinates)
        self._index.move(self._event.id, command.coordinates)
        self._map_publisher.moved(self._event.id, command.coordinates)
        await self._mirror_now()
        self._announce_count()  # announced at once, with the current count

    async def _add_media(self, command: AddMedia) -> None:
        self._check_owner(command.by)
        await self._store.add_event_media(self._event.id, command.media, epoch=self._epoch)
        media = tuple(m for m in self._event.media if m.id != command.media.id)
        self._event = dataclasses.replace(self._event, media=(*media, command.media))
        await self._mirror_now()
        self._room.broadcast(frames.media_added(command.media))

    async def _remove_media(self, command: RemoveMedia) -> None:
        self._check_owner(command.by)
        if not any(m.id == command.media_id for m in self._event.media):
            raise DomainError(ErrorCode.MEDIA_NOT_FOUND)
        await self._store.remove_event_media(self._event.id, command.media_id, epoch=self._epoch)
        self._event = dataclasses.replace(
            self._event, media=tuple(m for m in self._event.media if m.id != command.media_id))
        await self._mirror_now()
        self._room.broadcast(frames.media_removed(command.media_id))

    async def _remove_chat(self, command: RemoveChat) -> None:
        """Erase a line's text; its place stays, so `seq` and `since=` never shift."""
        self._check_owner(command.by)
        if not 1 <= command.seq <= self._chat_length:
            raise DomainError(ErrorCode.CHAT_MESSAGE_NOT_FOUND)
        index = command.seq - 1
        await self._store.erase_chat(self._event.id, index, epoch=self._epoch)
        if self._chat_json is not None:
            self._chat_json[index] = chat_lines.erased(self._chat_json[index])
            self._mirrored, self._mirrored_lines = None, 0  # the mirror's copy of it too
        await self._mirror_now()
        self._room.broadcast(chat_lines.chat_removed(command.seq))

    async def _remove_member(self, command: RemoveMember) -> None:
        """The ban is stored before any socket closes: a removed user who reconnects at once
        finds it, here or on any node, also after a failover."""
        self._check_owner(command.by)
        if command.user_id == self._event.owner_id:
            raise DomainError(ErrorCode.OWNER_CANNOT_BE_REMOVED)
        if command.ban and command.user_id not in self._room.banned:
            await self._store.ban_member(self._event.id, command.user_id, epoch=self._epoch)
            self._room.ban(command.user_id)
        sockets = len(self._room.members.get(command.user_id, ()))
        self._room.dismiss(command.user_id, CloseCode.REMOVED)
        log.info("member removed by the host", extra={
            "event_id": self._event.id, "user_id": command.user_id, "ban": command.ban,
            "sockets": sockets})

    async def _reread_chat(self) -> None:
        self._chat_json = None
        await self._snapshot()  # reads the store again (if the chat is short enough to keep)
        self._mirrored, self._mirrored_lines = None, 0  # every line mirrored again
        await self._mirror_now()

    async def _close(self, command: Close) -> None:
        self._check_owner(command.by)
        await self._store.close_event(self._event.id, epoch=self._epoch)
        self._event = dataclasses.replace(self._event, is_open=False)
        self._index.remove(self._event.id)
        self._map_publisher.closed(self._event.id)
        await self._mirror_now()
        self._room.broadcast(frames.CLOSE_EVENT)
        self._room.finish_members(CloseCode.NORMAL)
