"""Where a caller or a message for an event goes: a room here, a gateway to its owner, or on.

From this node's sockets and HTTP handlers (`find`): the event's room if it runs here, else a
gateway to the node that owns it (gateway.py), made at the first need and forgotten once it
has stayed idle GATEWAY_IDLE_SECONDS.

From other nodes (`node_message`, their messages on this node's channel): replies go to the
request that waits for them; requests are served by the room here, which the request may
first activate (ownership.py); notices (chat lines, a gateway's sockets) reach the room at once
and in their order, or wait, with those after them, while one of them starts it. A chat line
for an event that does not run here (any more) is sent on to the node that owns it now.
"""

from __future__ import annotations

import contextlib
import logging
import math

import msgspec
import trio

from vpiska.actors import CloseCode, EventSupervisor, Room
from vpiska.cluster import protocol
from vpiska.cluster.bus import Bus
from vpiska.cluster.contained import contained
from vpiska.cluster.gateway import RETRY_SECONDS, GatewayRoom
from vpiska.cluster.owner import OwnerLink
from vpiska.cluster.ownership import Ownership
from vpiska.cluster.protocol import Answer, BadRequest, Notice, Request, decode_all
from vpiska.cluster.rpc import Rpc, Unreachable
from vpiska.cluster.views import ViewMirror
from vpiska.domain import Event
from vpiska.errors import DomainError
from vpiska.store import Store

log = logging.getLogger(__name__)

# A gateway without sockets or requests is forgotten after this long unused.
GATEWAY_IDLE_SECONDS = 60.0
# A leaving node stays this long after the last chat line it had to forward (`linger`).
LINGER_SECONDS = 0.5
# How many times a chat line may be sent on to the node that owns its event now (`_forward`):
# once by the node it was sent to, once more if another node took the event meanwhile.
MAX_FORWARDS = 2


class Routing:
    """Resource handling: `sweep` returns only when cancelled; requests served, notices
    taken, lines forwarded and the gateways' own tasks run in `nursery` (the node's)."""

    def __init__(self, node_id: str, *, supervisor: EventSupervisor, ownership: Ownership,
                 owner_link: OwnerLink, rpc: Rpc, bus: Bus, views: ViewMirror, store: Store,
                 nursery: trio.Nursery, reply_timeout: float, ttl: float) -> None:
        self.node_id = node_id
        self._supervisor = supervisor
        self._ownership = ownership
        self._owner_link = owner_link
        self._rpc = rpc
        self._bus = bus
        self._views = views
        self._store = store
        self._nursery = nursery
        self._reply_timeout = reply_timeout
        self._ttl = ttl
        self.gateways: dict[str, GatewayRoom] = {}
        # Notices for an event that arrived while a notice before them starts its room.
        self._held_notices: dict[str, list[Notice]] = {}
        self._forwarding = 0  # chat lines on their way to another owner (`_forward`)
        self._last_stray = -math.inf  # when the last chat line for an event not here came

    # This node's callers.

    async def find(self, event_id: str) -> Room | GatewayRoom | None:
        """The room to talk to for `event_id`: ours if we own it, else a gateway to its owner;
        None if the event is unknown or closed."""
        room = self._supervisor.room(event_id)
        if room is not None:
            return room
        gateway = self.gateways.get(event_id)
        if gateway is not None:
            gateway.last_used = trio.current_time()
            return gateway
        event = await self._store.event(event_id)
        if event is None or not event.is_open:
            return None
        room = self._supervisor.room(event_id)  # activated while we read
        if room is not None:
            return room
        return self.gateways.setdefault(event_id, self._gateway(event))

    @property
    def sockets(self) -> int:
        """The sockets this node is the gateway of."""
        return sum(gateway.sockets for gateway in self.gateways.values())

    def close_gateways(self, code: CloseCode) -> None:
        for gateway in list(self.gateways.values()):
            gateway.close(code)

    def _gateway(self, event: Event) -> GatewayRoom:
        gateway = GatewayRoom(
            event.id, event.owner_id, owners=self._ownership, bus=self._bus, rpc=self._rpc,
            views=self._views, store=self._store, nursery=self._nursery,
            reply_timeout=self._reply_timeout,
            owner_silence=2 * self._ttl + self._reply_timeout)
        gateway.banned.update(event.banned)
        return gateway

    async def sweep(self) -> None:
        """Every third of the TTL, forget the gateways idle long enough."""
        while True:
            await trio.sleep(self._ttl / 3)
            self._forget_idle_gateways()

    def _forget_idle_gateways(self) -> None:
        """Gateways an HTTP request made and no socket uses, once they have been idle long
        enough that no caller can still be about to use one `find` gave it."""
        now = trio.current_time()
        for event_id, gateway in list(self.gateways.items()):
            if gateway.idle and now - gateway.last_used > GATEWAY_IDLE_SECONDS:
                del self.gateways[event_id]

    # Other nodes' messages.

    def node_message(self, data: bytes) -> None:
        for message in decode_all(data):
            match message:
                case Answer():
                    self._rpc.received(message)
                case Request():
                    self._nursery.start_soon(contained, f"serve {message.op.op}", self._serve,
                                             message)
                case BadRequest():
                    self._nursery.start_soon(contained, "refuse a request",
                                             self._owner_link.refuse, message)
                case Notice():
                    self._take_notice(message)
                case _:
                    pass  # an event's message: not for a node's channel

    async def _serve(self, request: Request) -> None:
        if (self._supervisor.room(request.event_id) is None
                and not isinstance(request.op, protocol.Position)):
            await self._ownership.activate_if_designated(request.event_id)
        await self._owner_link.answer(request)

    def _take_notice(self, notice: Notice) -> None:
        """A notice for a room running here reaches it at once, in the order they came: one
        member's chat lines arrive in one message, and tasks started together run in any
        order. One that may start the room first waits for it in a task of its own, and the
        event's notices after it wait with it."""
        held = self._held_notices.get(notice.event_id)
        if held is not None:
            held.append(notice)
        elif (self._supervisor.room(notice.event_id) is None
                and isinstance(notice.op, protocol.Chat | protocol.Sync | protocol.Activate)):
            self._held_notices[notice.event_id] = []
            self._nursery.start_soon(contained, f"take {notice.op.op}", self._take, notice)
        else:
            self._deliver_notice(notice)

    async def _take(self, notice: Notice) -> None:
        try:
            if isinstance(notice.op, protocol.Chat) and notice.op.forwarded:
                # Sent here as its owner: the lease decides.
                await self._ownership.activate(notice.event_id)
            else:
                await self._ownership.activate_if_designated(notice.event_id)
        finally:
            for each in [notice, *self._held_notices.pop(notice.event_id)]:
                self._deliver_notice(each)

    def _deliver_notice(self, notice: Notice) -> None:
        if isinstance(notice.op, protocol.Chat) and not self._takes_lines(notice.event_id):
            self._forward(notice.op, notice.event_id)
            return
        try:
            self._owner_link.received(notice)
        except Exception:  # a bug, for this notice alone (contained.py)
            log.exception("cluster task failed", extra={"task": f"take {notice.op.op}"})

    def _takes_lines(self, event_id: str) -> bool:
        """The event runs here, and its room is not being handed over."""
        room = self._supervisor.room(event_id)
        return room is not None and not room.handing_over

    def _forward(self, line: protocol.Chat, event_id: str) -> None:
        """A chat line for an event that does not run here (any more: handed over, fenced;
        or its room is being handed over) goes on to the node that owns it now (once this
        one's lease is released), at most MAX_FORWARDS times: a gateway may send it here
        before it has seen the event move, and the line would be lost without a word."""
        self._last_stray = trio.current_time()
        if line.forwarded >= MAX_FORWARDS:
            log.info("chat line dropped: forwarded to a node that does not run the event",
                     extra={"event_id": event_id})
            return
        with contextlib.suppress(RuntimeError):  # the node is closing: nobody to tell
            self._nursery.start_soon(contained, "forward a chat line", self._forward_to_owner,
                                     line, event_id)

    async def _forward_to_owner(self, line: protocol.Chat, event_id: str) -> None:
        self._forwarding += 1
        try:
            await self._forward_once(line, event_id)
        finally:
            self._forwarding -= 1

    async def _forward_once(self, line: protocol.Chat, event_id: str) -> None:
        with trio.move_on_after(self._reply_timeout):
            while True:
                try:
                    owner = await self._ownership.owner_of(event_id)
                except DomainError:
                    return  # closed meanwhile
                if self._takes_lines(event_id):
                    self._owner_link.received(Notice(line, event_id))
                    return
                if owner != self.node_id:
                    try:
                        await self._rpc.tell(owner, msgspec.structs.replace(
                            line, forwarded=line.forwarded + 1), event_id)
                        return
                    except Unreachable:
                        pass
                self._ownership.forget_owner(event_id)  # its lease may still name this node
                await trio.sleep(RETRY_SECONDS)
        log.info("chat line dropped: no owner reachable", extra={"event_id": event_id})

    async def linger(self) -> None:
        """Gateways send chat lines here until they have seen the Handover: stay until those
        on their way have been forwarded to the new owners (quiet for LINGER_SECONDS, a third
        of the TTL at most). Leaving at once, a line Redis had handed to this node was lost."""
        since = trio.current_time()
        with trio.move_on_after(self._ttl / 3):
            while True:
                quiet_at = max(since, self._last_stray) + LINGER_SECONDS
                now = trio.current_time()
                if now >= quiet_at and not self._forwarding:
                    return
                await trio.sleep_until(max(quiet_at, now + LINGER_SECONDS / 10))

