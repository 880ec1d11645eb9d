"""A gateway: an event owned by another node, as this node's sockets and requests see it.

A socket lands on whatever node the balancer picked; that node is its gateway. `GatewayRoom`
offers the sockets and the HTTP handlers the interface of a local Room (ask, send, leave), and
carries it over Redis: requests to the owner (found through its lease, activated if there is
none), the owner's frames from the event's channel to the local sockets, each frame's wire
bytes built once for all of them.

Ordering and gaps. Every message of the owner is numbered (epoch, seq). A joining socket is
held until the owner's answer says which seq it joined at; it then gets the state it was sent
and every frame after that seq, nothing before. A message whose seq skips one means frames
were lost on the way (Redis pub/sub is at most once): the gateway never hides that, it closes
its sockets with 1012 and they rejoin with `since` (the store has every line). A new owner
(after a failover or a handover) says Hello with the chat's length: the gateway reads the
lines it had not seen from the store, tells the new owner who its sockets are, and its sockets
stay open.

Reads. Every `events/get` of an event owned elsewhere must be answered from a read made after
the request arrived, as on one node: of the view the owner keeps in Redis (views.py, where
reads made at once share one Redis call), or, when that cannot say, of the owner itself. Up to
READS_IN_FLIGHT owner reads are on their way at once; requests that arrive while all of them
are wait for the next one, which leaves as soon as one of those is answered, and share its
answer: a node asked many times at once makes a round trip per answer, not one per request
(`SharedAnswer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import msgspec
import trio

from vpiska import metrics
from vpiska.actors import CloseCode, EventView, Member, OutboxClosed, OutboxFull
from vpiska.actors import lines as chat_lines
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
from vpiska.actors.commands import (
    Reply as ReplyChannel,
)
from vpiska.actors.frames import Audience, Frame
from vpiska.actors.presence import LIST_PREFIX
from vpiska.cluster import protocol, redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.contained import contained
from vpiska.cluster.protocol import (
    CloseAll,
    CloseSockets,
    EventMessage,
    Frames,
    Handover,
    Hello,
    decode,
)
from vpiska.cluster.rpc import NoAnswer, Rpc, Unreachable
from vpiska.cluster.shared_answer import SharedAnswer
from vpiska.cluster.trouble import Trouble
from vpiska.cluster.views import view_of
from vpiska.domain import Identity
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import Store

log = logging.getLogger(__name__)

# Between tries to reach an owner that is not there yet (a failover, a handover).
RETRY_SECONDS = 0.05
# While a request waits for its owner, how often the gateway looks whether another node owns
# the event now (the owner's lookup is cached: a dictionary read, until the owner changes).
OWNER_CHECK_SECONDS = 0.25
# Reads of one event on their way to its owner at once. With one, a request arriving just after
# a read left waited for it and then for a whole round trip of its own: the node that does not
# own an event answered its events/get at about half the rate of its owner.
READS_IN_FLIGHT = 4


class NoOwnerAnswered(DomainError):
    """No node answered as the event's owner within the reply deadline (a handover or a
    failover took longer): a socket joining is told to try again (1012), an HTTP request
    gets InternalError."""


class Owners(Protocol):
    """What a gateway needs of its node: who owns an event (activating it if nobody does)."""

    node_id: str

    async def owner_of(self, event_id: str) -> str:
        """The owning node; DomainError(EventNotFound) if the event is unknown or closed."""

    def forget_owner(self, event_id: str) -> None:
        """The cached owner did not answer as one: ask Redis next time."""

    def owner_is(self, event_id: str, node_id: str) -> None:
        """A new owner has said so on the event's channel: ask it from now on."""


class Views(Protocol):
    """Where owners keep their events' views (views.ViewMirror)."""

    async def read(self, event_id: str) -> EventView | None:
        """The event as its owner shows it now; None when that cannot be told here."""


@dataclasses.dataclass(eq=False)
class _Socket:
    member: Member
    key: str
    # Frames (epoch, seq, frame) that arrived before the join's answer; None once joined.
    held: list[tuple[int, int, Frame]] | None
    # Where it joined: the owner's epoch and last message then. Frames at or before it are
    # not its own (it read those lines from the store), also when they arrive after its
    # join's answer: the answer and the frames travel on different channels.
    start: tuple[int, int] = (0, 0)
    # A v2 socket that has been told its presence list (the owner's `presence/`, for it alone)
    # is shown the changes to it from then on (Audience.PRESENT); before, it is not.
    present: bool = False


class GatewayRoom:
    """Resource handling: the gateway subscribes to the event's channel while it has sockets
    and unsubscribes after the last one leaves; the node forgets a gateway that has stayed
    `idle` a while (routing.py). Tasks it starts (leaves, syncs, catch-ups) run in the
    node's nursery."""

    def __init__(self, event_id: str, owner_id: str, *, owners: Owners, bus: Bus, rpc: Rpc,
                 views: Views, store: Store, nursery: trio.Nursery, reply_timeout: float,
                 owner_silence: float) -> None:
        self.event_id = event_id
        self.owner_id = owner_id  # the event's owner user, for the early check of uploads
        self.failed = False
        # Users the host banned, as the store had them when this gateway was made and as the
        # owner's notices told since (cluster_channel.py): their handshakes here get 403.
        self.banned: set[str] = set()
        self._owners = owners
        self._bus = bus
        self._rpc = rpc
        self._views = views
        self._store = store
        self._nursery = nursery
        self._reply_timeout = reply_timeout
        self._owner_silence = owner_silence  # how long a handover may go without a Hello
        self.last_used = trio.current_time()
        self._requests = 0  # in flight
        self._keys = (f"{owners.node_id}-{n}" for n in itertools.count(1))
        self._sockets: dict[str, _Socket] = {}
        self._key_of: dict[Member, str] = {}
        self._subscription: trio.Event | None = None  # set once the channel is listened to
        self._epoch: int | None = None  # the owner's epoch we follow; None until a join
        self._seq = 0
        self._chat_length = 0
        self._early: list[EventMessage] = []  # messages before the first join's answer
        self._waiting: list[EventMessage] | None = None  # messages during a catch-up
        self._handover_deadline: trio.CancelScope | None = None
        # Set from a Handover until the next owner's Hello: chat lines wait for that owner.
        self._between_owners: trio.Event | None = None
        # The read gathering callers; it leaves after the ones on their way.
        self._next_read: SharedAnswer[EventView] | None = None
        self._reading = trio.Semaphore(READS_IN_FLIGHT)  # held by reads on their way
        # Requests no owner answered: one warning for a burst (a storm of joins), not one each.
        self._unanswered = Trouble(log, "event commands unanswered: no owner answered in time")

    # The Room interface of vpiska/http.

    @property
    def users_count(self) -> int:
        return len({s.member.identity.user_id for s in self._sockets.values()})

    @property
    def sockets(self) -> int:
        return len(self._sockets)

    def users(self) -> set[str]:
        """The users with a socket to the event on this node."""
        return {s.member.identity.user_id for s in self._sockets.values()}

    async def ask(self, make: Callable[[ReplyChannel], object]) -> object:
        reply, answer = trio.open_memory_channel[Any](1)
        answer.close()
        command = make(reply)
        reply.close()
        match command:
            case Join():
                return await self._join(command.member)
            case Snapshot():
                return await self._snapshot()
            case Members():
                return [_identity(entry) for entry in await self._request(protocol.Members())]
            case Update(by, address, coordinates):
                return await self._request(
                    protocol.Update(by, address, coordinates.x, coordinates.y))
            case AddMedia(by, media):
                return await self._request(protocol.AddMedia(by, media.id, media.content_type))
            case RemoveMedia(by, media_id):
                return await self._request(protocol.RemoveMedia(by, media_id))
            case Close(by):
                return await self._request(protocol.Close(by))
            case RemoveChat(by, seq):
                return await self._request(protocol.RemoveChat(by, seq))
            case RereadChat():
                return await self._request(protocol.RereadChat())
            case RemoveMember(by, user_id, ban):
                removed = await self._request(protocol.RemoveMember(by, user_id, ban))
                if ban:  # here at once: the host's client may check through this node
                    self.banned.add(user_id)
                return removed
        raise TypeError(f"GatewayRoom cannot ask {command!r}")

    async def enter(self, member: Member) -> None:
        """A join answered by the owner, as `ask` does it: the gateway follows the owner's
        messages from the join's answer on."""
        await self._join(member)

    async def send(self, command: object) -> bool:
        """A chat line to the owner; kept trying through a failover up to the reply
        deadline, then dropped (and logged): a line nobody saw was never acknowledged. After
        a Handover it waits for the next owner's Hello: the old one has ended the room."""
        assert isinstance(command, Chat)
        identity = command.sender
        # An acknowledged line goes with the key of its socket, when it is still here.
        key = (None if command.client_id is None or command.member is None
               else self._key_of.get(command.member))
        line = protocol.Chat(identity.user_id, identity.name, identity.image_id, command.text,
                             command.client_id, key)
        with trio.move_on_after(self._reply_timeout):
            if self._between_owners is not None:
                await self._between_owners.wait()
            while True:
                try:
                    await self._rpc.tell(await self._owners.owner_of(self.event_id), line,
                                         self.event_id)
                    return True
                except Unreachable:
                    self._owners.forget_owner(self.event_id)
                except DomainError:
                    return True  # closed meanwhile: the socket is being closed
                await trio.sleep(RETRY_SECONDS)
        log.info("chat line dropped: no owner reachable", extra={"event_id": self.event_id})
        return True

    async def _snapshot(self) -> EventView:
        view = await self._views.read(self.event_id)
        if view is not None:
            return view
        read = self._next_read
        if read is None:
            read = self._next_read = SharedAnswer[EventView]()
            try:
                self._nursery.start_soon(partial(
                    contained, f"read ({self.event_id})", read.fill,
                    partial(self._read, read)))
            except RuntimeError:  # the node is closing: ask alone
                self._next_read = None
                return view_of(await self._request(protocol.Snapshot()))
        return await read.wait()

    async def _read(self, read: SharedAnswer[EventView]) -> EventView:
        """Resource handling: runs in the node's nursery (SharedAnswer); `_request` bounds it
        by the reply deadline."""
        async with self._reading:
            if self._next_read is read:
                self._next_read = None  # from here on, callers wait for the next read
            return view_of(await self._request(protocol.Snapshot()))

    def leave(self, member: Member) -> None:
        key = self._key_of.pop(member, None)
        if key is None:
            return
        del self._sockets[key]
        self._spawn("leave", self._tell_owner, protocol.Leave(key))
        if not self._sockets:
            self._spawn("unsubscribe", self._unsubscribe)

    def _spawn(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """A task of this gateway's in the node's nursery; if it fails, the stream can no
        longer be trusted: the sockets rejoin."""
        try:
            self._nursery.start_soon(partial(
                contained, f"{what} ({self.event_id})", fn, *args,
                on_failure=lambda: self._lost(f"{what} failed")))
        except RuntimeError:  # the node is closing: nothing is told anyone any more
            log.debug("gateway task not started: the node is closing", extra={"task": what})

    def close(self, code: CloseCode) -> None:
        """Close this node's sockets of the event (the node is leaving the cluster)."""
        for socket in list(self._sockets.values()):
            socket.member.outbox.finish(code)

    def close_user(self, user_id: str, code: CloseCode) -> None:
        """Close this node's sockets of `user_id` to the event (their account was deleted)."""
        for socket in list(self._sockets.values()):
            if socket.member.identity.user_id == user_id:
                socket.member.outbox.finish(code)

    # Joining.

    async def _join(self, member: Member) -> Joined:
        key = next(self._keys)
        self._sockets[key] = _Socket(member, key, held=[])
        self._key_of[member] = key
        try:
            await self._subscribe()
            identity = member.identity
            answer = await self._request(protocol.Join(
                identity.user_id, identity.name, identity.image_id, key, member.version))
        except NoOwnerAnswered:
            member.outbox.finish(CloseCode.SERVICE_RESTART)  # the next try may find one
            self.leave(member)
            raise
        except BaseException:
            self.leave(member)
            raise
        if "closed" in answer:  # turned away by the owner
            code = CloseCode(answer["closed"])
            if code is CloseCode.REMOVED:  # banned (not a room that ended with the join queued)
                self.banned.add(member.identity.user_id)
            member.outbox.finish(code)
            self.leave(member)
            raise DomainError(ErrorCode.EVENT_NOT_FOUND)
        epoch, seq = int(answer["epoch"]), int(answer["seq"])
        if self._epoch is None:  # the first socket: this answer is where the stream starts
            self._epoch, self._seq = epoch, seq
            self._chat_length = int(answer["chat_length"])
            early, self._early = self._early, []
            for message in early:
                self._process(message)
        socket = self._sockets.get(key)
        if socket is None:  # gone while joining (closed, or the stream was lost)
            raise DomainError(ErrorCode.EVENT_NOT_FOUND)
        if epoch < self._epoch:  # joined an owner the gateway has seen replaced: start over
            socket.member.outbox.finish(CloseCode.SERVICE_RESTART)
            raise DomainError(ErrorCode.INTERNAL_ERROR)
        # It starts after its join: the state it was sent, then what its owner published
        # after. A newer owner than the gateway follows yet says Hello soon; its frames (held
        # or to come) are this socket's, its catch-up is not (the socket reads the store).
        held, socket.held, socket.start = socket.held or [], None, (epoch, seq)
        due = [] if answer.get("state") is None else [Frame(str(answer["state"]))]
        due += [frame for frame_epoch, frame_seq, frame in held
                if frame_epoch == epoch and frame_seq > seq]
        if due:
            self._deliver(socket, due)
        return Joined(int(answer["chat_length"]), seq)

    async def _subscribe(self) -> None:
        if self._subscription is None:
            self._subscription = trio.Event()
            await self._bus.subscribe(redis.event_channel(self.event_id), self._received,
                                      self._renewed)
            self._subscription.set()
        await self._subscription.wait()

    async def _unsubscribe(self) -> None:
        if self._sockets or self._subscription is None:
            return
        self._subscription = None
        self._epoch, self._seq, self._early = None, 0, []
        await self._bus.unsubscribe(redis.event_channel(self.event_id))

    @property
    def idle(self) -> bool:
        """No socket, no request in flight, not subscribed: nothing would miss it."""
        return not self._sockets and not self._requests and self._subscription is None

    # The owner's messages.

    def _received(self, data: bytes) -> None:
        message = decode(data)
        if not isinstance(message, Frames | Hello | Handover | CloseAll | CloseSockets):
            return
        if self._epoch is None:
            self._early.append(message)
        elif self._waiting is not None:
            self._waiting.append(message)
        else:
            self._process(message)

    def _process(self, message: EventMessage) -> None:
        assert self._epoch is not None
        if message.epoch < self._epoch:
            return  # from an owner fenced off since: nothing it says counts
        if message.epoch > self._epoch:
            if isinstance(message, Hello):
                self._new_owner(message)
            else:
                self._lost("a new owner without its hello")
            return
        if message.seq <= self._seq:
            if not isinstance(message, Frames) or message.last_seq <= self._seq:
                return  # had it already
            # Frames the owner published in one message across the point this gateway
            # started from (a join's answer): the later ones are new.
            message = msgspec.structs.replace(
                message, seq=self._seq + 1, frames=message.frames[self._seq + 1 - message.seq:])
        if message.seq != self._seq + 1:
            self._lost(f"frames {self._seq + 1}..{message.seq - 1} missing")
            return
        if isinstance(message, Frames):
            self._seq = message.last_seq
            self._fan_out(message)
        elif isinstance(message, CloseAll):
            self._seq = message.seq
            self.failed = message.code == CloseCode.INTERNAL_ERROR
            for socket in list(self._sockets.values()):
                socket.member.outbox.finish(CloseCode(message.code))
        elif isinstance(message, CloseSockets):
            self._seq = message.seq
            for removed in filter(None, map(self._sockets.get, message.keys)):
                removed.member.outbox.finish(CloseCode(message.code))
        elif isinstance(message, Handover):
            self._seq = message.seq
            self._between_owners = self._between_owners or trio.Event()
            self._spawn("await a new owner", self._await_new_owner)
        else:
            self._seq = message.seq  # a Hello of the epoch we follow: nothing new

    def _fan_out(self, message: Frames) -> None:
        # Split once per message, by protocol version and by the socket a frame is for, so a
        # socket's share costs it only its own frames: a chat line shown to v1 and v2 sockets
        # as two frames costs a v1 socket what one frame did.
        shown: dict[int, list[tuple[tuple[int, int], Frame]]] = {1: [], 2: []}
        told: dict[str, list[tuple[tuple[int, int], Frame]]] = {}
        changes = False  # presence changes, for the v2 sockets that have their list
        for offset, entry in enumerate(message.frames):
            if entry.chat is not None:
                self._chat_length = max(self._chat_length, entry.chat + 1)
            frame = Frame(entry.text, Audience(entry.audience))
            position = (message.epoch, message.seq + offset)
            if entry.to is not None:
                told.setdefault(entry.to, []).append((position, frame))
                continue
            if frame.audience is Audience.PRESENT:
                shown[2].append((position, frame))
                changes = True
                continue
            for version, frames in shown.items():
                if frame.seen_by(version):
                    frames.append((position, frame))
        whole = {version: [frame for _, frame in frames] for version, frames in shown.items()}
        delivered = 0
        for socket in list(self._sockets.values()):
            version = socket.member.version
            mine = shown[version]
            own = told.get(socket.key) if told else None
            if own:
                mine = sorted([*mine, *((p, f) for p, f in own if f.seen_by(version))],
                              key=lambda shown_at: shown_at[0])
            # Whether the message's frames for its version are all its own: `whole` then is.
            common = not own
            if version == 2 and (changes or own):
                common = common and socket.present  # a socket without its list sees no change
                mine = _shown_to_v2(socket, mine)
            if socket.held is not None:
                socket.held.extend((*position, frame) for position, frame in mine)
                continue
            # Frames from before its join are left out: it has those lines from the store.
            if common and (not mine or mine[0][0] > socket.start):
                due = whole[version]
            else:
                due = [frame for position, frame in mine if position > socket.start]
            if due and self._deliver(socket, due):
                delivered += len(due)
        metrics.FRAMES_SENT.inc(delivered)

    def _deliver(self, socket: _Socket, frames: list[Frame]) -> bool:
        """`frames` to one socket, in one write when it can take them."""
        try:
            socket.member.outbox.deliver_all(frames)
            return True
        except OutboxFull:
            log.info("slow consumer disconnected", extra={
                "event_id": self.event_id, "user_id": socket.member.identity.user_id})
            socket.member.outbox.abort(CloseCode.SLOW_CONSUMER)
            metrics.SLOW_CONSUMER_DISCONNECTS.inc()
        except OutboxClosed:
            pass
        self.leave(socket.member)
        return False

    def _lost(self, cause: str) -> None:
        """Frames may be missing: nothing here can show them, so the sockets rejoin."""
        log.warning("event stream lost; sockets told to reconnect",
                    extra={"event_id": self.event_id, "cause": cause,
                           "sockets": len(self._sockets)})
        self._epoch, self._seq, self._early, self._waiting = None, 0, [], None
        self._owner_known()
        for socket in list(self._sockets.values()):
            socket.member.outbox.finish(CloseCode.SERVICE_RESTART)

    def _renewed(self) -> None:
        """The subscription was renewed after a lost connection: check nothing was missed."""
        self._spawn("verify the stream", self._verify)

    async def _verify(self) -> None:
        if self._epoch is None:
            return
        try:
            position = await self._request(protocol.Position())
        except DomainError:
            self._spawn("await a new owner", self._await_new_owner)
            return
        if self._epoch is None:  # lost meanwhile: the sockets are rejoining already
            return
        log.info("gateway checks its stream after a renewed subscription", extra={
            "event_id": self.event_id, "owner_epoch": position["epoch"],
            "owner_seq": position["seq"], "epoch": self._epoch, "seq": self._seq})
        if int(position["epoch"]) == self._epoch and int(position["seq"]) == self._seq:
            return
        if int(position["epoch"]) > self._epoch:
            return  # a new owner: its Hello is on the way (or lost: then its frames say so)
        self._lost("messages lost while the subscription was down")

    # A new owner.

    async def _await_new_owner(self) -> None:
        """After a handover (or a lost owner) a Hello must follow; without one, give up."""
        epoch = self._epoch
        with trio.move_on_after(self._owner_silence):
            while self._epoch == epoch and self._sockets:
                try:  # asking activates the event if nobody has yet
                    await self._owners.owner_of(self.event_id)
                except DomainError:
                    break
                await trio.sleep(RETRY_SECONDS * 10)
            return
        if self._epoch == epoch and self._sockets:
            self._lost("no new owner after a handover")

    def _new_owner(self, hello: Hello) -> None:
        log.info("gateway follows a new owner", extra={
            "event_id": self.event_id, "owner": hello.origin, "epoch": hello.epoch,
            "chat_length": hello.chat_length, "had_lines": self._chat_length})
        self._epoch, self._seq = hello.epoch, hello.seq
        for socket in self._sockets.values():
            socket.present = False  # the new owner sends a list first, then its changes
        # The old owner may still listen on its channel (paused past its lease, or fenced
        # when it lost Redis): a chat line sent on to it would be taken and then dropped.
        self._owners.owner_is(self.event_id, hello.origin)
        self._owner_known()
        self._waiting = []
        self._spawn("catch up", self._catch_up, hello)

    def _owner_known(self) -> None:
        """Chat lines held since a Handover go on (to the new owner, or they fail)."""
        if self._between_owners is not None:
            self._between_owners.set()
            self._between_owners = None

    async def _catch_up(self, hello: Hello) -> None:
        """Show the lines this gateway missed between owners, then follow the new one.

        Error handling: frames wait meanwhile, so a catch-up that fails or does not end
        within the reply deadline gives up: the sockets rejoin instead.
        """
        with trio.move_on_after(self._reply_timeout) as deadline:
            await self._catch_up_lines(hello)
        if deadline.cancelled_caught:
            self._lost("catch-up after a new owner took too long")

    async def _catch_up_lines(self, hello: Hello) -> None:
        had = self._chat_length  # the lines this gateway's sockets were shown
        try:
            if hello.chat_length > had:
                missed = await self._store.chat(self.event_id, had)
                numbered = list(enumerate(missed[: hello.chat_length - had], start=had + 1))
                shown = {version: [chat_lines.for_version(line, seq, version)
                                   for seq, line in numbered] for version in (1, 2)}
                for socket in list(self._sockets.values()):
                    # Those that joined the new owner read the store themselves.
                    if numbered and socket.held is None and socket.start[0] < hello.epoch:
                        self._deliver(socket, shown[socket.member.version])
                self._chat_length = hello.chat_length
            await self._sync(hello.origin)
        except Exception as error:  # the store or Redis failed: the sockets rejoin instead
            log.warning("catch-up after a new owner failed",
                        extra={"event_id": self.event_id, "cause": repr(error)})
            self._lost("catch-up failed")
            return
        waiting, self._waiting = self._waiting or [], None
        for message in waiting:
            if self._epoch is None:
                break
            self._process(message)

    async def _sync(self, owner: str) -> None:
        """Tell the owner which sockets of this event are here."""
        members = [protocol.SyncedSocket(key, s.member.identity.user_id, s.member.identity.name,
                                         s.member.identity.image_id, s.member.version)
                   for key, s in self._sockets.items()]
        try:
            await self._rpc.tell(owner, protocol.Sync(self._owners.node_id, members),
                                 self.event_id)
        except Unreachable:
            self._owners.forget_owner(self.event_id)

    # Talking to the owner.

    async def _tell_owner(self, op: protocol.OwnerNoticeOp) -> None:
        try:
            await self._rpc.tell(await self._owners.owner_of(self.event_id), op, self.event_id)
        except (Unreachable, DomainError):
            pass  # an owner that is gone forgets this socket with this node's heartbeat

    async def _request(self, op: protocol.RequestOp) -> Any:
        """Ask the owner; through a failover, until the reply deadline.

        Error handling: the owner's refusal as DomainError; InternalError (logged) when no
        owner answered in time.
        """
        self._requests += 1
        try:
            return await self._ask_owner(op)
        finally:
            self._requests -= 1
            self.last_used = trio.current_time()

    async def _ask_owner(self, op: protocol.RequestOp) -> Any:
        with trio.move_on_after(self._reply_timeout):
            while True:
                try:
                    owner = await self._owners.owner_of(self.event_id)
                except DomainError as refusal:
                    if ErrorCode.INTERNAL_ERROR not in refusal.codes:
                        raise  # no such open event
                    await trio.sleep(RETRY_SECONDS)  # Redis did not say: ask again
                    continue
                try:
                    answer = await self._ask_while_owner(owner, op)
                except (Unreachable, NoAnswer):
                    self._owners.forget_owner(self.event_id)
                    await trio.sleep(RETRY_SECONDS)
                    continue
                if answer is None or answer.status == "not_owner":
                    self._owners.forget_owner(self.event_id)
                    await trio.sleep(RETRY_SECONDS)
                    continue
                self._unanswered.succeeded()
                return _value_of(answer)
        self._unanswered.failed(NoAnswer(f"no owner answered {op.op} in time"),
                                event_id=self.event_id)
        raise NoOwnerAnswered(ErrorCode.INTERNAL_ERROR)

    async def _ask_while_owner(self, owner: str, op: protocol.RequestOp
                               ) -> protocol.Answer | None:
        """Ask `owner`, for as long as it is the owner: None once another node is (a leaving
        owner may never answer, and this node, or a third, may own the event by then).

        Error handling: Unreachable and NoAnswer escape, as Rpc.ask's."""
        outcome: protocol.Answer | Unreachable | NoAnswer | None = None
        async with trio.open_nursery() as nursery:

            async def ask() -> None:
                nonlocal outcome
                try:
                    outcome = await self._rpc.ask(owner, op, self.event_id, self._reply_timeout)
                except (Unreachable, NoAnswer) as error:
                    outcome = error
                nursery.cancel_scope.cancel()

            nursery.start_soon(ask)
            while True:
                await trio.sleep(OWNER_CHECK_SECONDS)
                with contextlib.suppress(DomainError):  # not known now: ask on
                    if await self._owners.owner_of(self.event_id) != owner:
                        nursery.cancel_scope.cancel()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _shown_to_v2(socket: _Socket, mine: list[tuple[tuple[int, int], Frame]]
                 ) -> list[tuple[tuple[int, int], Frame]]:
    """What of a v2 socket's share of a message it sees, in order: presence changes only once
    its presence list, told to it alone, has come before them (vpiska/actors/presence.py)."""
    seen = []
    for position, frame in mine:
        if frame.audience is Audience.PRESENT:
            if socket.present:
                seen.append((position, frame))
            continue
        seen.append((position, frame))
        if frame.text.startswith(LIST_PREFIX):
            socket.present = True
    return seen


def _identity(entry: list[str]) -> Identity:
    """A present user as the owner answers `members`."""
    user_id, name, image_id = entry
    return Identity(str(user_id), str(name), str(image_id))


def _value_of(answer: protocol.Answer) -> Any:
    if answer.status == "ok":
        return answer.value
    if answer.status == "refused":
        raise DomainError(*(ErrorCode(code) for code in answer.value))
    raise DomainError(ErrorCode.INTERNAL_ERROR)
