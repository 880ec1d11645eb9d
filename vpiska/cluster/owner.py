"""The owner's side of the cluster: its rooms' frames go out once per event, others' asks come in.

Publishing: a room calls its publisher synchronously as it broadcasts (it never waits on
Redis); every message of an event is numbered (epoch, seq) in the order the room produced it,
and one sender task publishes them in that order, gathering all frames an event produced while
the previous PUBLISH was in flight into one message (the frames' own group commit). If Redis
cannot take them they are dropped and logged: listeners see the numbers jump and recover
(gateway.py), and the store, not Redis, is the record.

Serving: requests from other nodes' gateways and HTTP handlers reach the owned room through
the same Room interface local callers use. A remote socket is a Member whose outbox is
`RemoteOutbox`: the room counts it but never writes to it; its frames go out on the event's
channel, and only the state a joiner is sent at once is kept, for the join's answer.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from typing import Any, assert_never

import trio

from vpiska.actors import CloseCode, EventSupervisor, EventView, Member, Room
from vpiska.actors.commands import (
    AddMedia,
    Chat,
    Close,
    Command,
    Join,
    Joined,
    Members,
    RemoveChat,
    RemoveMedia,
    RemoveMember,
    RereadChat,
    Snapshot,
    Update,
)
from vpiska.actors.commands import Reply as ReplyChannel
from vpiska.actors.frames import Frame
from vpiska.actors.lines import MAX_CLIENT_ID_CHARS
from vpiska.cluster import protocol, redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.protocol import (
    Answer,
    BadRequest,
    CloseAll,
    CloseSockets,
    EventMessage,
    Frames,
    Handover,
    Hello,
    Notice,
    Request,
    Shown,
    encode,
)
from vpiska.cluster.rpc import Rpc
from vpiska.cluster.trouble import Trouble
from vpiska.cluster.views import view_value
from vpiska.domain import Coordinates, EventMedia, Identity, is_id, is_text
from vpiska.errors import DomainError, RoomMoved

log = logging.getLogger(__name__)

# Messages waiting to be published, over all events: past this, new ones are dropped (and the
# gap reported by the listeners) rather than held in memory while Redis is away.
MAX_PENDING = 100_000
# Requests from other nodes handled at once.
MAX_CONCURRENT_REQUESTS = 256


class RemoteOutbox:
    """A socket on another node. Frames reach it through the event's channel; the room writes
    to it only at its join (the state it is sent at once), which is kept for the answer."""

    def __init__(self, gateway: str, key: str) -> None:
        self.gateway = gateway
        self.key = key
        self.state: Frame | None = None
        # The code the room closed it with at its join (a banned user's), for the answer.
        self.closed: CloseCode | None = None

    def deliver(self, frame: Frame) -> None:
        self.state = frame

    def deliver_all(self, frames: Sequence[Frame]) -> None:
        if frames:
            self.state = frames[-1]

    def finish(self, code: CloseCode) -> None:
        self.closed = code  # otherwise the gateway closes its sockets on CloseAll

    def abort(self, code: CloseCode) -> None:
        pass


# A frame waiting for the sender: (epoch, seq, the frame).
_Queued = tuple[int, int, Shown]


class OwnerLink:
    """Resource handling: `run` owns the sender task; it publishes what is queued when it is
    cancelled only as far as the cancellation allows (a handover flushes first: `flush`)."""

    def __init__(self, node_id: str, bus: Bus, rpc: Rpc, supervisor: EventSupervisor, *,
                 notify: Callable[[protocol.ClusterNoticeOp, str], None]) -> None:
        self._node_id = node_id
        self._notify = notify
        self._bus = bus
        self._rpc = rpc
        self._supervisor = supervisor
        self._outgoing: dict[str, list[EventMessage | _Queued]] = {}
        self._pending = 0
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._dropping = False
        self._requests = trio.CapacityLimiter(MAX_CONCURRENT_REQUESTS)
        self._unpublished = Trouble(log, "frames not published: Redis unreachable")
        # Remote sockets by event and key, so a leave or a sync finds the Member the room has.
        self.remote: dict[str, dict[str, Member]] = collections.defaultdict(dict)

    # The publisher interface of vpiska/actors/room.py (called on the room's task).

    def frame(self, room: Room, seq: int, frame: Frame, chat_index: int | None) -> None:
        self._queue(room.event_id, (self._epoch(room), seq,
                                    Shown(chat_index, frame.text, frame.audience)))

    def direct(self, room: Room, seq: int, member: Member, frame: Frame) -> None:
        assert isinstance(member.outbox, RemoteOutbox), "a member on another node"
        self._queue(room.event_id, (self._epoch(room), seq,
                                    Shown(None, frame.text, frame.audience, member.outbox.key)))

    def hello(self, room: Room, seq: int, chat_length: int) -> None:
        self._queue(room.event_id, Hello(self._node_id, self._epoch(room), seq, chat_length))

    def handover(self, room: Room, seq: int) -> None:
        self._queue(room.event_id, Handover(self._node_id, self._epoch(room), seq))

    def close_all(self, room: Room, seq: int, code: CloseCode) -> None:
        self._queue(room.event_id, CloseAll(self._node_id, self._epoch(room), seq, int(code)))
        self.remote.pop(room.event_id, None)

    def close_sockets(self, room: Room, seq: int, members: Sequence[Member],
                      code: CloseCode) -> None:
        keys = [member.outbox.key for member in members
                if isinstance(member.outbox, RemoteOutbox)]
        self._queue(room.event_id, CloseSockets(self._node_id, self._epoch(room), seq,
                                                int(code), keys))
        known = self.remote.get(room.event_id, {})
        for key in keys:
            known.pop(key, None)

    def banned(self, room: Room, user_id: str) -> None:
        self._notify(protocol.Banned(user_id), room.event_id)

    def counted(self, room: Room, users_count: int) -> None:
        self._notify(protocol.Counted(users_count), room.event_id)

    @staticmethod
    def _epoch(room: Room) -> int:
        assert room.epoch is not None, "a published room is owned under an epoch"
        return room.epoch

    def _queue(self, event_id: str, entry: EventMessage | _Queued) -> None:
        if self._pending >= MAX_PENDING:
            if not self._dropping:
                log.warning("frames dropped: Redis is not taking them fast enough",
                            extra={"pending": self._pending})
                self._dropping = True
            return
        self._outgoing.setdefault(event_id, []).append(entry)
        self._pending += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    async def run(self) -> None:
        """The sender: publish what the rooms queued, in order, one message per run of
        frames per event."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            outgoing, self._outgoing = self._outgoing, {}
            for event_id, entries in outgoing.items():
                channel = redis.event_channel(event_id)
                for message in _messages(self._node_id, entries):
                    try:
                        await self._bus.publish(channel, encode(message))
                    except redis.REDIS_ERRORS as error:
                        self._unpublished.failed(error, event_id=event_id)
                    else:
                        self._unpublished.succeeded()
                self._pending -= len(entries)
            if not self._outgoing:
                self._dropping = False
                self._idle.set()

    async def flush(self) -> None:
        """Return once everything queued so far has been handed to Redis (or dropped)."""
        await self._idle.wait()

    # Serving other nodes.

    # ASYNC109: `timeout` is the caller's reply deadline, unused: Room.ask keeps the same one.
    async def answer(self, request: Request) -> None:
        """Answer a request for an event this node owns (or say it does not), within the
        room's own reply deadline (Room.ask)."""
        async with self._requests:
            room = self._supervisor.room(request.event_id)
            # A room being handed over refuses what comes: the asker tries the next owner.
            if room is None or room.epoch is None or room.handing_over:
                answer = Answer(request.id, "not_owner", None)
            else:
                try:
                    answer = Answer(request.id, "ok", await self._ask(room, request))
                except RoomMoved:  # queued behind the hand-over, or the room was fenced
                    answer = Answer(request.id, "not_owner", None)
                except DomainError as refusal:
                    answer = Answer(request.id, "refused", [str(code) for code in refusal.codes])
                except ValueError as error:
                    log.warning("malformed request", extra={"op": request.op.op,
                                                            "cause": repr(error)})
                    answer = Answer(request.id, "failed", None)
            await self._rpc.answer(request, answer)

    async def refuse(self, request: BadRequest) -> None:
        """Answer a request whose operation could not be read: it failed (the asker learns at
        once, rather than at its deadline)."""
        log.warning("malformed request", extra={"op": request.op, "from": request.reply_to,
                                                "cause": request.cause})
        await self._rpc.answer(request, Answer(request.id, "failed", None))

    async def _ask(self, room: Room, request: Request) -> Any:
        op = request.op
        if isinstance(op, protocol.Join):
            outbox = RemoteOutbox(request.reply_to, op.key)
            member = Member(_identity(op.user, op.name, op.image), outbox,
                            gateway=request.reply_to, version=op.v)
            self.remote[room.event_id][outbox.key] = member
            try:
                joined = await room.ask(lambda reply: Join(member, reply))
            except DomainError:
                if outbox.closed is None:
                    raise
                self.remote[room.event_id].pop(outbox.key, None)
                return {"closed": int(outbox.closed)}  # turned away: banned
            assert isinstance(joined, Joined)
            state = outbox.state
            return {"chat_length": joined.chat_length, "seq": joined.seq,
                    "epoch": room.epoch, "state": None if state is None else state.text}
        if isinstance(op, protocol.Snapshot):
            view = await room.ask(Snapshot)
            assert isinstance(view, EventView)
            return view_value(view)
        if isinstance(op, protocol.Position):
            return {"epoch": room.epoch, "seq": room.seq}
        if isinstance(op, protocol.Members):
            present = await room.ask(Members)
            assert isinstance(present, list)
            return [[user.user_id, user.name, user.image_id] for user in present]
        return await room.ask(_command(op))

    def received(self, notice: Notice, from_node: str | None = None) -> None:
        """A notice for an event this node owns: chat, leave or a gateway's sync."""
        room = self._supervisor.room(notice.event_id)
        if room is None or room.epoch is None:
            return  # moved on: the sender re-resolves the owner when it next asks
        op = notice.op
        try:
            match op:
                case protocol.Chat():
                    self._chat(room, op)
                case protocol.Leave(key):
                    member = self.remote[room.event_id].pop(key, None)
                    if member is not None:
                        room.leave(member)
                case protocol.Sync(gateway, members):
                    self._sync(room, gateway, members)
                case protocol.Activate():
                    pass  # the node started the room (node.py `_take_notice`)
                case (protocol.Created() | protocol.Moved() | protocol.Closed()
                      | protocol.AccountDeleted() | protocol.Banned() | protocol.Counted()
                      | protocol.Left()):
                    pass  # for every node, on the cluster channel (node.py)
                case _:
                    assert_never(op)
        except ValueError as error:
            log.warning("malformed notice", extra={"op": op.op, "cause": repr(error)})

    def _chat(self, room: Room, line: protocol.Chat) -> None:
        if line.id is not None and not _client_id(line.id):
            raise ValueError("not a client id")
        # The sending socket, if this room knows it yet (it may not after a failover: the line
        # is stored, and its resend acknowledged).
        member = None if line.key is None else self.remote[room.event_id].get(line.key)
        try:
            room.offer(Chat(_identity(line.user, line.name, line.image), line.text,
                            line.id, None if line.id is None else member))
        except trio.WouldBlock:
            log.warning("remote chat line dropped: the event's inbox is full",
                        extra={"event_id": room.event_id})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _sync(self, room: Room, gateway: str, members: list[protocol.SyncedSocket]) -> None:
        """Make the room's view of `gateway`'s sockets what the gateway says it is."""
        known = self.remote[room.event_id]
        said = {entry.key: entry for entry in members}
        for key in [key for key, member in known.items()
                    if isinstance(member.outbox, RemoteOutbox)
                    and member.outbox.gateway == gateway and key not in said]:
            room.leave(known.pop(key))
        for key, entry in said.items():
            if key in known:
                continue
            member = Member(_identity(entry.user, entry.name, entry.image),
                            RemoteOutbox(gateway, key), gateway=gateway, version=entry.v)
            known[key] = member
            try:  # the answer is not needed: the gateway's socket joined long ago
                room.offer(Join(member, None))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                known.pop(key)

    def drop_gateway(self, gateway: str) -> None:
        """`gateway`'s heartbeat is gone: its sockets leave every room of ours."""
        for event_id, known in self.remote.items():
            room = self._supervisor.room(event_id)
            for key in [key for key, m in known.items()
                        if isinstance(m.outbox, RemoteOutbox) and m.outbox.gateway == gateway]:
                member = known.pop(key)
                if room is not None:
                    room.leave(member)


def _identity(user_id: str, name: str, image: str) -> Identity:
    if not is_id(user_id):
        raise ValueError("not a user id")
    if not (is_text(name) and is_text(image)):  # it would break every v2 socket's presence
        raise ValueError("name or image not text")
    return Identity(user_id, name, image)


def _client_id(value: str) -> bool:
    """Whether a gateway's `id` of a chat line is one a socket could have sent."""
    return 1 <= len(value) <= MAX_CLIENT_ID_CHARS and is_text(value)


def _command(op: protocol.Update | protocol.AddMedia | protocol.RemoveMedia | protocol.Close
             | protocol.RemoveChat | protocol.RereadChat | protocol.RemoveMember
             ) -> Callable[[ReplyChannel], Command]:
    """The room command a request asks for, as `ask` takes it."""
    match op:
        case protocol.Update(by, address, x, y):
            return lambda reply: Update(by, address, Coordinates(x, y), reply)
        case protocol.AddMedia(by, media_id, content_type):
            return lambda reply: AddMedia(by, EventMedia(media_id, content_type), reply)
        case protocol.RemoveMedia(by, media_id):
            return lambda reply: RemoveMedia(by, media_id, reply)
        case protocol.Close(by):
            return lambda reply: Close(by, reply)
        case protocol.RemoveChat(by, seq):
            return lambda reply: RemoveChat(by, seq, reply)
        case protocol.RereadChat():
            return RereadChat
        case protocol.RemoveMember(by, user_id, ban):
            if not is_id(user_id):
                raise ValueError("not a member to remove")
            return lambda reply: RemoveMember(by, user_id, ban, reply)
        case _:
            assert_never(op)


def _messages(origin: str, entries: list[EventMessage | _Queued]) -> list[EventMessage]:
    """Queued entries as messages: each run of consecutive frames is one Frames message."""
    messages: list[EventMessage] = []
    run: list[_Queued] = []

    def close_run() -> None:
        if run:
            messages.append(Frames(origin, run[0][0], run[0][1],
                                   [shown for _, _, shown in run]))
            run.clear()

    for entry in entries:
        if isinstance(entry, tuple):
            if run and (entry[0] != run[-1][0] or entry[1] != run[-1][1] + 1):
                close_run()
            run.append(entry)
        else:
            close_run()
            messages.append(entry)
    close_run()
    return messages

