"""A Room is what the supervisor keeps of one open event between actor incarnations.

It holds the event's inbox and its live member table, so a restarted actor takes over the same
queue and the same sockets: members stay connected across a restart (see EventSupervisor).

Only the room's own task changes it: the running EventActor, and the supervisor on that same
task once no actor runs (between two incarnations, and as the room ends). Any other task may
read it, and reaches the actor only through the messaging methods below, which put a command
in its inbox and change nothing else; tests/test_layers.py holds the code to that.

In a cluster (vpiska/cluster) the room also has a `Publisher`: every frame it broadcasts goes
to its own sockets here and, once, to the other nodes' sockets through the publisher, numbered
by `seq` within the owner's `epoch`. Members on other nodes are counted here but written to
only through the publisher. Its `mirror` (vpiska/actors/view.py) is where the other nodes read
the event from.

How callers reach the actor, by what they need:
- `ask`: a request with an answer (events endpoints, a join), bounded by the reply deadline;
- `send`: a chat line; waits while the inbox is full (back-pressure on the socket's reader), up
  to the same deadline, then reports the room as overloaded;
- `leave`: never waits and is never lost, because a member that cannot leave would be counted
  forever;
- `offer`: a command from another node, which nobody waits for: queued now or not at all;
- `stop`: the server shuts down; waits for room in the inbox as long as it takes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn, Protocol

import outcome
import trio

from vpiska import metrics
from vpiska.actors.commands import Command, Join, Leave, Reply, Stop
from vpiska.actors.frames import Audience, Frame, for_version
from vpiska.actors.member import CloseCode, Member, OutboxClosed, OutboxFull
from vpiska.actors.presence import LIST_PREFIX, Presence, present_users, users_text
from vpiska.actors.view import Mirror
from vpiska.domain import Identity
from vpiska.errors import DomainError, ErrorCode, RoomMoved

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where a cluster room's frames go besides its own sockets (vpiska/cluster/owner.py).
    Every method is called on the room's task and must not wait. The room numbers what it
    publishes: `seq` is the message's number within the room's epoch (the room's `seq`
    now), one more than the message before it."""

    def frame(self, room: Room, seq: int, frame: Frame, chat_index: int | None) -> None: ...

    def direct(self, room: Room, seq: int, member: Member, frame: Frame) -> None:
        """`frame` for one socket on another node (`member.gateway`), in the stream's order."""

    def hello(self, room: Room, seq: int, chat_length: int) -> None:
        """The room is (again) active under this node's epoch."""

    def handover(self, room: Room, seq: int) -> None:
        """The room stops here; another node will own it."""

    def close_all(self, room: Room, seq: int, code: CloseCode) -> None:
        """Every socket of the event closes with `code` (closed, failed)."""

    def close_sockets(self, room: Room, seq: int, members: Sequence[Member],
                      code: CloseCode) -> None:
        """`members`, sockets on other nodes, close with `code`, in the stream's order."""

    def banned(self, room: Room, user_id: str) -> None:
        """`user_id` was banned: every node's gateway to the event refuses their handshakes."""

    def counted(self, room: Room, users_count: int) -> None:
        """The usersCount members were just told (for every node's map)."""


class Room:
    def __init__(self, event_id: str, owner_id: str, *, inbox_size: int,
                 reply_timeout: float, epoch: int | None = None, claimant: str | None = None,
                 publisher: Publisher | None = None, mirror: Mirror | None = None,
                 banned: Iterable[str] = ()) -> None:
        self.event_id = event_id
        self.owner_id = owner_id  # never changes, so callers may check ownership up front
        self._inbox, self.commands = trio.open_memory_channel[Command](inbox_size)
        self.members: dict[str, set[Member]] = {}  # user id -> that user's open sockets
        self.local: set[Member] = set()  # the members whose sockets are on this node
        # Sockets of protocol v2 among `members`, here or on other nodes: while there are
        # none, a chat line is one frame for everyone (vpiska/actors/lines.py).
        self.v2_members = 0
        # Members that left while the inbox was full: a second inbox, for them alone and
        # unbounded, which the actor empties after its current command (`remove_departed`).
        self._departing, self._departures = trio.open_memory_channel[Member](math.inf)
        # A command the actor took from the inbox early (the one that ended a chat batch it was
        # gathering) and has not handled yet. It lives here, not in the actor, so a crash in
        # the batch's write does not lose it: the next incarnation handles it first.
        self.read_ahead: Command | None = None
        # The usersCount the members were last told (the actor coalesces count changes). It
        # lives here so a change still pending when an actor crashes is announced by the next.
        self.announced_count = 0
        self.failed = False
        # Users the host banned (Event.banned): their handshakes are refused with 403 before
        # the upgrade, a set lookup; the actor turns away a join that slipped past it.
        self.banned: set[str] = set(banned)
        # The actor has taken a Stop(hand_over): it writes what was queued and ends, and takes
        # no chat line from another node any more (the node sends those on to the next owner).
        self.handing_over = False
        # Another node serves the event now (handed over, or fenced): what the room refuses
        # from then on, it never handled, and may be asked again where the event runs.
        self.moved = False
        self.epoch = epoch  # the fencing epoch of this node's lease; None on a single node
        self.claimant = claimant  # who claimed `epoch` in the store: this node, this activation
        self.publisher = publisher
        self.mirror = mirror
        self.seq = 0  # the last message published (`_next_seq`)
        # What v2 sockets were shown of who is here (presence.py); it lives here, like the
        # member table, so an actor's restart keeps it.
        self.presence = Presence()
        self._reply_timeout = reply_timeout

    @property
    def users_count(self) -> int:
        return len(self.members)

    @property
    def sockets(self) -> int:
        """Open sockets on this node."""
        return len(self.local)

    async def ask(self, make: Callable[[Reply], Command]) -> object:
        """Send the command `make(reply)` and return its answer, or raise its DomainError.

        Error handling: EventNotFound once the event has closed; RoomMoved when another node
        took the event before the room handled the command; InternalError (logged with the
        cause) when the room has failed, crashed while handling this command, or did not
        answer within the reply deadline. It never waits longer than that deadline.
        """
        reply, answer = trio.open_memory_channel[outcome.Outcome[object]](1)
        try:
            with trio.fail_after(self._reply_timeout):
                await self._inbox.send(make(reply))
                with answer:
                    result = await answer.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._ended()
        except trio.EndOfChannel:
            self._internal("the event's room crashed while handling the command")
        except trio.TooSlowError:
            self._internal("the event's room did not answer in time")
        return result.unwrap()

    async def enter(self, member: Member) -> None:
        """Join `member` without waiting for the actor to take it in: its Join is queued ahead
        of anything the member sends, and the actor writes it the event's state. What a socket
        that needs no catch-up does: a round trip to the actor less per handshake.

        Error handling: as `ask`: EventNotFound once the event has closed; InternalError if
        the room has failed, or its inbox stayed full for the reply deadline.
        """
        join = Join(member, None)
        try:
            try:
                self._inbox.send_nowait(join)
            except trio.WouldBlock:
                with trio.fail_after(self._reply_timeout):
                    await self._inbox.send(join)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._ended()
        except trio.TooSlowError:
            self._internal("the event's room did not answer in time")

    def _ended(self) -> NoReturn:
        """The room's inbox is closed: the event moved to another node (RoomMoved), the room
        failed (InternalError), or its event closed."""
        if self.moved:
            raise RoomMoved from None
        if self.failed:
            self._internal("the event's room has failed")
        raise DomainError(ErrorCode.EVENT_NOT_FOUND) from None

    def _internal(self, cause: str) -> NoReturn:
        log.error("event command failed", extra={"event_id": self.event_id, "cause": cause})
        raise DomainError(ErrorCode.INTERNAL_ERROR)

    async def send(self, command: Command) -> bool:
        """Queue a command that needs no answer; False if the inbox stayed full for the whole
        reply deadline (the room is overloaded). A room that has ended takes nothing: its
        members are being closed already.

        An inbox with room takes the command at once, without a deadline: every chat line
        comes this way, and a deadline's cancel scope costs more than the rest of a line's way
        to the actor. It still yields once, as a channel's send does: a reader that did not
        (its socket's frames already read) kept the others and the actor from running."""
        try:
            try:
                self._inbox.send_nowait(command)
            except trio.WouldBlock:
                pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return True
            with trio.move_on_after(self._reply_timeout):
                await self._inbox.send(command)
                return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("command dropped: the room has ended", extra={"event_id": self.event_id})
            return True
        return False

    def leave(self, member: Member) -> None:
        """Take `member` out of the room, now or after the actor's current command."""
        try:
            self._inbox.send_nowait(Leave(member))
        except trio.WouldBlock:
            self._departing.send_nowait(member)  # unbounded: never WouldBlock
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the room has ended and finished every member

    def offer(self, command: Command) -> None:
        """Queue `command` now, without waiting (a notice from another node).

        Error handling: trio.WouldBlock if the inbox is full; trio.BrokenResourceError or
        trio.ClosedResourceError once the room has ended.
        """
        self._inbox.send_nowait(command)

    async def stop(self, *, hand_over: bool = False) -> None:
        """Queue a Stop after what is queued, waiting for room in the inbox for as long as it
        takes (the server bounds its shutdown); a room that has ended needs none."""
        try:
            await self._inbox.send(Stop(hand_over))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # ended or failed already

    # What follows runs on the room's task only.

    def remove_departed(self) -> None:
        """Take out the members that left while the inbox was full."""
        while True:
            try:
                member = self._departures.receive_nowait()
            except trio.WouldBlock:
                return
            self.remove(member)

    def add(self, member: Member) -> None:
        if self.presence.watching and member.identity.user_id not in self.members:
            self.presence.arrived(member.identity)
        sockets = self.members.setdefault(member.identity.user_id, set())
        if member.version == 2:
            if member not in sockets:
                self.v2_members += 1
            self.presence.socket_added(member)
        sockets.add(member)
        if member.gateway is None:
            self.local.add(member)

    def remove(self, member: Member) -> None:
        sockets = self.members.get(member.identity.user_id)
        if member.version == 2:
            self.presence.socket_removed(member)
            if sockets is not None and member in sockets:
                self.v2_members -= 1
        if sockets is not None:
            sockets.discard(member)
            if not sockets:
                del self.members[member.identity.user_id]
                if self.presence.watching:
                    self.presence.departed(member.identity.user_id)
        self.local.discard(member)

    def present(self) -> list[Identity]:
        """Each user connected now, once, in the order they arrived."""
        return present_users(self.members)

    def announce_presence(self) -> None:
        """Tell v2 sockets who came and went since the last announcement; those waiting for
        their list are sent it instead (presence.py). Frames are built only when some
        socket is to see them."""
        changes = self.presence.changes()
        if changes:
            dropped = [member for member in self.presence.watching
                       if member.gateway is None and not self._deliver(member, changes)]
            for member in dropped:
                self.remove(member)
            if self.publisher is not None and self.presence.remote_watching:
                for frame in changes:
                    self.publisher.frame(self, self._next_seq(), frame, None)
        waiting = self.presence.take_waiting()
        if waiting:
            listed = Frame(LIST_PREFIX + users_text(self.present()), Audience.V2)
            for member in waiting:
                self.tell(member, listed)

    def broadcast(self, frame: Frame, chat_index: int | None = None) -> None:
        """Deliver `frame` to every member, never waiting; a member too slow to take it is
        dropped with 4008, so one stuck phone never holds up the room. `chat_index`: the chat
        line the frame shows, if it is one (the other nodes' catch-up counts on it)."""
        self._to_everyone((frame,))
        if self.publisher is not None:
            self.publisher.frame(self, self._next_seq(), frame, chat_index)

    def broadcast_lines(self, frames: Sequence[Frame], first_index: int) -> None:
        """`broadcast` the frames of chat lines `first_index`, `first_index + 1`, ... (one
        store write's batch): each member gets them all in one write."""
        self._to_everyone(frames)
        if self.publisher is not None:
            for index, frame in enumerate(frames, start=first_index):
                self.publisher.frame(self, self._next_seq(), frame, index)

    def broadcast_numbered(self, frames: Sequence[tuple[Frame, int]]) -> None:
        """`broadcast_lines` for frames that each name their chat line: a line shown as one
        frame per audience is two frames of one line."""
        self._to_everyone([frame for frame, _ in frames])
        if self.publisher is not None:
            for frame, index in frames:
                self.publisher.frame(self, self._next_seq(), frame, index)

    def tell(self, member: Member, frame: Frame) -> None:
        """Deliver `frame` to `member` alone (an answer to what its socket sent), after every
        frame broadcast before it, never waiting; a member too slow to take it is dropped."""
        if member.gateway is not None:
            if self.publisher is not None:
                self.publisher.direct(self, self._next_seq(), member, frame)
        elif member in self.local and not self._deliver(member, (frame,)):
            self.remove(member)

    def dismiss(self, user_id: str, code: CloseCode) -> None:
        """Close every socket of `user_id`, here and on other nodes, with `code` once what
        is queued for it is out, and take them out of the room (the count changes now)."""
        members = list(self.members.get(user_id, ()))
        remote = [member for member in members if member.gateway is not None]
        for member in members:
            if member.gateway is None:
                member.outbox.finish(code)
            self.remove(member)  # the one way out of the member table
        if remote:
            self.close_remote(remote, code)

    def close_remote(self, members: Sequence[Member], code: CloseCode) -> None:
        """Close `members`, sockets on other nodes, with `code` once what is queued for them
        is out."""
        if self.publisher is not None:
            self.publisher.close_sockets(self, self._next_seq(), members, code)

    def ban(self, user_id: str) -> None:
        """Turn `user_id` away from now on, here and at every node's gateway to the event."""
        self.banned.add(user_id)
        if self.publisher is not None:
            self.publisher.banned(self, user_id)

    def hello(self, chat_length: int) -> None:
        """A new incarnation of the actor starts: tell the other nodes the room is active
        (again) under this node's epoch."""
        if self.publisher is not None:
            self.publisher.hello(self, self._next_seq(), chat_length)

    def _next_seq(self) -> int:
        """The number of the message about to be published."""
        self.seq += 1
        return self.seq

    def _to_everyone(self, frames: Sequence[Frame]) -> None:
        # The loop is the fan-out's hot path: one delivery per member, nothing else.
        v1, v2 = for_version(frames, 1), for_version(frames, 2)
        dropped: list[Member] = []
        for member in self.local:
            shown = v2 if member.version == 2 else v1
            if not shown:
                continue
            try:
                member.outbox.deliver_all(shown)
            except OutboxFull:
                self._too_slow(member)
                dropped.append(member)
            except OutboxClosed:
                dropped.append(member)  # its connection is gone; its Leave is on the way
        for member in dropped:
            self.remove(member)
        metrics.FRAMES_SENT.inc(len(self.local) * len(frames))

    def _deliver(self, member: Member, frames: Sequence[Frame]) -> bool:
        """`frames` to a local member; False if it is gone or was dropped as too slow."""
        try:
            member.outbox.deliver_all(frames)
        except OutboxFull:
            self._too_slow(member)
            return False
        except OutboxClosed:
            return False  # its connection is gone; its Leave is on the way
        return True

    def _too_slow(self, member: Member) -> None:
        log.info("slow consumer disconnected", extra={
            "event_id": self.event_id, "user_id": member.identity.user_id})
        member.outbox.abort(CloseCode.SLOW_CONSUMER)
        metrics.SLOW_CONSUMER_DISCONNECTS.inc()

    def announce(self, frame: Frame, users_count: int) -> None:
        """Broadcast an `eventUpdated` frame telling `users_count`."""
        self.announced_count = users_count
        self.broadcast(frame)
        if self.publisher is not None:
            self.publisher.counted(self, users_count)

    def shut(self, code: CloseCode) -> None:
        """End the room for good: refuse queued and future commands, close every socket."""
        while True:  # answer what is queued, then close: both at once, no await in between
            if self.read_ahead is not None:
                command, self.read_ahead = self.read_ahead, None
            else:
                try:
                    command = self.commands.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            self.refuse(command, code)
        self.commands.close()
        self._departures.close()
        self.finish_members(code)

    def shut_failed(self) -> None:
        """End the room as failed (past its restart limit): its callers get InternalError,
        every socket of it 1011."""
        self.failed = True
        self.shut(CloseCode.INTERNAL_ERROR)

    def shut_fenced(self) -> None:
        """End the room as fenced (a newer owner has the event): its callers get RoomMoved,
        this node's sockets 1012; the other nodes' stay, for the new owner."""
        self.failed = True
        self.moved = True
        self.publisher = None
        self.shut(CloseCode.SERVICE_RESTART)

    def refuse(self, command: Command, code: CloseCode) -> None:
        """Answer `command` as a room that ends with `code` does: a joining socket is closed
        with it, an asker told the event is closed (NORMAL), that it moved to another node
        (SERVICE_RESTART, or any code once `moved`), or that the room is gone."""
        moved = self.moved or code is CloseCode.SERVICE_RESTART
        if isinstance(command, Join):
            command.member.outbox.finish(CloseCode.SERVICE_RESTART if moved else code)
        reply = getattr(command, "reply", None)
        if reply is not None:
            # An answer, not a closed channel (which the asker would take for a crash): a
            # closed event is what later asks get too; otherwise the room is gone.
            refusal = (RoomMoved() if moved else DomainError(
                ErrorCode.EVENT_NOT_FOUND if code is CloseCode.NORMAL
                else ErrorCode.INTERNAL_ERROR))
            with contextlib.suppress(trio.BrokenResourceError):  # the caller gave up
                reply.send_nowait(outcome.Error(refusal))
            reply.close()

    def finish_members(self, code: CloseCode) -> None:
        """Close every member's socket with `code` once its queued frames are out, on every
        node."""
        self._finish_local(code)
        if self.publisher is not None:
            self.publisher.close_all(self, self._next_seq(), code)

    def hand_over(self, code: CloseCode) -> None:
        """Close this node's sockets with `code`; the other nodes keep theirs for the next
        owner."""
        self.moved = True
        self._finish_local(code)
        if self.publisher is not None:
            self.publisher.handover(self, self._next_seq())
            self.publisher = None  # the room's last word here: what follows is the new owner's

    def _finish_local(self, code: CloseCode) -> None:
        for member in self.local:
            member.outbox.finish(code)
        self.members.clear()
        self.v2_members = 0
        self.local.clear()
