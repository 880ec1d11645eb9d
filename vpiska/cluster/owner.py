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
from typing import Any

import trio

from vpiska.actors import CloseCode, EventSupervisor, EventView, Member, Room
from vpiska.actors.commands import (
    AddMedia,
    Chat,
    Close,
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
from vpiska.actors.frames import Frame
from vpiska.actors.lines import MAX_CLIENT_ID_CHARS
from vpiska.cluster import redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.protocol import (
    CloseAll,
    CloseSockets,
    EventMessage,
    Frames,
    Handover,
    Hello,
    Notice,
    Reply,
    Request,
    Shown,
    encode,
)
from vpiska.cluster.rpc import Rpc
from vpiska.cluster.trouble import Trouble
from vpiska.cluster.views import view_value
from vpiska.domain import Coordinates, EventMedia, Identity, is_id, is_text
from vpiska.errors import DomainError

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
                 notify: Callable[[str, str, dict[str, Any]], None]) -> None:
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
        self._notify("banned", room.event_id, {"user": user_id})

    def counted(self, room: Room, users_count: int) -> None:
        self._notify("counted", room.event_id, {"count": users_count})

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
                reply = Reply(request.id, "not_owner", None)
            else:
                try:
                    reply = Reply(request.id, "ok", await self._ask(room, request))
                except DomainError as refusal:
                    reply = Reply(request.id, "refused", [str(code) for code in refusal.codes])
                except (KeyError, TypeError, ValueError) as error:
                    log.warning("malformed request", extra={"op": request.op,
                                                            "cause": repr(error)})
                    reply = Reply(request.id, "failed", None)
            await self._rpc.answer(request, reply)

    async def _ask(self, room: Room, request: Request) -> Any:
        args = request.args
        op = request.op
        if op == "join":
            outbox = RemoteOutbox(request.reply_to, str(args["key"]))
            member = Member(_identity(args), outbox, gateway=request.reply_to,
                            version=_version(args.get("v", 1)))
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
        if op == "snapshot":
            view = await room.ask(Snapshot)
            assert isinstance(view, EventView)
            return view_value(view)
        if op == "position":
            return {"epoch": room.epoch, "seq": room.seq}
        if op == "members":
            present = await room.ask(Members)
            assert isinstance(present, list)
            return [[user.user_id, user.name, user.image_id] for user in present]
        command = _command(op, args)
        return await room.ask(command)

    def received(self, notice: Notice, from_node: str | None = None) -> None:
        """A notice for an event this node owns: chat, leave or a gateway's sync."""
        room = self._supervisor.room(notice.event_id)
        if room is None or room.epoch is None:
            return  # moved on: the sender re-resolves the owner when it next asks
        args = notice.args
        try:
            if notice.op == "chat":
                self._chat(room, args)
            elif notice.op == "leave":
                member = self.remote[room.event_id].pop(str(args["key"]), None)
                if member is not None:
                    room.leave(member)
            elif notice.op == "sync":
                self._sync(room, str(args["gateway"]), args["members"])
        except (KeyError, TypeError, ValueError) as error:
            log.warning("malformed notice", extra={"op": notice.op, "cause": repr(error)})

    def _chat(self, room: Room, args: dict[str, Any]) -> None:
        client_id = args.get("id")
        if client_id is not None and not _client_id(client_id):
            raise ValueError("not a client id")
        # The sending socket, if this room knows it yet (it may not after a failover: the line
        # is stored, and its resend acknowledged).
        member = self.remote[room.event_id].get(str(args.get("key")))
        try:
            room.offer(Chat(_identity(args), str(args["text"]), client_id,
                            None if client_id is None else member))
        except trio.WouldBlock:
            log.warning("remote chat line dropped: the event's inbox is full",
                        extra={"event_id": room.event_id})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _sync(self, room: Room, gateway: str, members: list[list[str]]) -> None:
        """Make the room's view of `gateway`'s sockets what the gateway says it is."""
        known = self.remote[room.event_id]
        said = {str(entry[0]): entry for entry in members}
        for key in [key for key, member in known.items()
                    if isinstance(member.outbox, RemoteOutbox)
                    and member.outbox.gateway == gateway and key not in said]:
            room.leave(known.pop(key))
        for key, entry in said.items():
            if key in known:
                continue
            identity = _identity({"user": entry[1], "name": entry[2], "image": entry[3]})
            version = _version(entry[4] if len(entry) > 4 else 1)
            member = Member(identity, RemoteOutbox(gateway, key), gateway=gateway,
                            version=version)
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


def _identity(args: dict[str, Any]) -> Identity:
    user_id = str(args["user"])
    if not is_id(user_id):
        raise ValueError("not a user id")
    name, image = str(args["name"]), str(args["image"])
    if not (is_text(name) and is_text(image)):  # it would break every v2 socket's presence
        raise ValueError("name or image not text")
    return Identity(user_id, name, image)


def _client_id(value: Any) -> bool:
    """Whether a gateway's `id` of a chat line is one a socket could have sent."""
    return (isinstance(value, str) and 1 <= len(value) <= MAX_CLIENT_ID_CHARS
            and is_text(value))


def _version(value: Any) -> int:
    """A socket's protocol version as a gateway tells it (absent from nodes before v2: 1)."""
    if value not in (1, 2):
        raise ValueError("not a protocol version")
    return int(value)


def _command(op: str, args: dict[str, Any]) -> Any:
    """The room command a request asks for, as `ask` takes it."""
    by = str(args.get("by", ""))
    if op == "update":
        coordinates = Coordinates(float(args["x"]), float(args["y"]))
        return lambda reply: Update(by, str(args["address"]), coordinates, reply)
    if op == "add_media":
        media = EventMedia(str(args["id"]), str(args["content_type"]))
        return lambda reply: AddMedia(by, media, reply)
    if op == "remove_media":
        return lambda reply: RemoveMedia(by, str(args["media_id"]), reply)
    if op == "close":
        return lambda reply: Close(by, reply)
    if op == "remove_chat":
        seq = args["seq"]
        if type(seq) is not int:
            raise ValueError("not a line number")
        return lambda reply: RemoveChat(by, seq, reply)
    if op == "reread_chat":
        return RereadChat
    if op == "remove_member":
        user_id, ban = str(args["user"]), args["ban"]
        if not is_id(user_id) or type(ban) is not bool:
            raise ValueError("not a member to remove")
        return lambda reply: RemoveMember(by, user_id, ban, reply)
    raise ValueError(f"unknown request {op!r}")


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

