"""One node of the cluster: its heartbeat, its leases, its rooms and its gateways, in one place.

What a node does, every third of the lease TTL (`_keep_alive`):
- beats in the nodes set and learns which nodes are alive;
- renews the leases of the events it owns; a lease it finds lost is fenced at once (the
  room stops, its sockets are told to reconnect with 1012);
- if it could not reach Redis for two thirds of the TTL, fences every room it owns before
  any lease could expire (self-fencing): another node may own them by the time it is back;
- takes over the orphans it is designated for (rendezvous hashing over the live nodes).

A node that cannot reach the store (`_follow_store`: its ping, every third of the TTL, went
unanswered for READY_TIMEOUT_SECONDS, as /readyz counts) can write nothing, so it steps aside
until the store answers again: it fences its rooms and releases their leases (a healthy node
takes each event over at once), leaves the nodes set (no node designates it), closes its
sockets with 1012 (they reconnect to a node that can serve them), owns nothing new, and
/readyz answers 503. Once the store answers, it joins again.

An event nobody owns is also activated on demand: a request or a chat line for it goes to the
node it is designated for, which acquires the lease, claims the epoch in the store (from then
on the store refuses older owners' writes) and starts the actor.

Leaving (SIGTERM): the node leaves the nodes set, hands every room over (each writes the lines
it took in, says Handover, its own sockets close with 1012), releases the leases only then
(the next owner cannot claim an event whose room still writes) and tells the others to look
for orphans now, not after a TTL.

The map index `events/range` reads is cluster-wide on every node: loaded from the store at
start, then kept current by notices (created, moved, closed, counted) on the cluster channel,
and reloaded from the store when that channel's subscription was renewed after a lost
connection (notices may have been missed). The moves and closes of the rooms owned here are
told by their actors through `MapNotices` (map_notices.py), which the node only runs.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Sequence
from functools import partial
from typing import Protocol, assert_never

import coredis
import msgspec
import trio

from vpiska import metrics
from vpiska.actors import CloseCode, EventSupervisor, Room
from vpiska.actors.geo import MapIndex, Spot
from vpiska.cluster import protocol, redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.contained import contained
from vpiska.cluster.gateway import RETRY_SECONDS, GatewayRoom
from vpiska.cluster.leases import Lease, Leases
from vpiska.cluster.map_notices import MapNotices
from vpiska.cluster.nodes import designated, new_node_id
from vpiska.cluster.owner import OwnerLink
from vpiska.cluster.protocol import Answer, BadRequest, Notice, Request, decode, decode_all, encode
from vpiska.cluster.rpc import Rpc, Unreachable
from vpiska.cluster.shared_answer import SharedAnswer
from vpiska.cluster.trouble import Trouble
from vpiska.cluster.views import ViewMirror
from vpiska.config import Config
from vpiska.domain import Coordinates, Event
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import StaleEpoch, Store
from vpiska.store.health import StoreHealth

log = logging.getLogger(__name__)

# A gateway without sockets or requests is forgotten after this long unused.
GATEWAY_IDLE_SECONDS = 60.0
# A leaving node stays this long after the last chat line it had to forward (`_linger`).
LINGER_SECONDS = 0.5
# How many times a chat line may be sent on to the node that owns its event now (`_forward`):
# once by the node it was sent to, once more if another node took the event meanwhile.
MAX_FORWARDS = 2
# Every this many beats the node also looks for orphans it should own, in case a notice was
# missed (a node's death is noticed by its missing heartbeat, not by any message).
RECONCILE_EVERY_BEATS = 3


class KnownUsers(Protocol):
    def forget(self, user_id: str) -> None:
        """The account was deleted: its tokens must not identify anyone any more."""

    def forget_all(self) -> None:
        """Deletions may have been missed: ask the store again about every account."""


class ClusterNode:
    """The `Rooms` of vpiska/http in a cluster (vpiska/actors/rooms.py).

    `index` is the map of every open event of the cluster, the one `supervisor` keeps and
    its actors change; `map_notices` is the map publisher the supervisor was given, which
    tells the other nodes of those changes.

    Resource handling: `run` owns every task of the node (the bus, the senders, the
    heartbeat) and returns only when cancelled; `leave` hands the rooms over first."""

    def __init__(self, config: Config, store: Store, supervisor: EventSupervisor,
                 client: coredis.Redis[bytes], bus: Bus, index: MapIndex,
                 map_notices: MapNotices) -> None:
        self.node_id = new_node_id()
        self._config = config
        self._store = store
        self._supervisor = supervisor
        self._client = client
        self._ttl = config.lease_ttl_seconds
        self._bus = bus
        self._map_notices = map_notices
        self._rpc = Rpc(self._bus, self.node_id)
        self._leases = Leases(client, self.node_id, self._ttl)
        self._views = ViewMirror(client, Trouble(log, "event views not written: Redis unreachable"))
        self.owner_link = OwnerLink(self.node_id, self._bus, self._rpc, supervisor,
                                    notify=self.notify_soon)
        self._heartbeat = client.register_script(redis.HEARTBEAT)
        self._index = index
        self._owned: dict[str, Lease] = {}
        self._owners: dict[str, str] = {}  # cached owner node of events owned elsewhere
        self._gateways: dict[str, GatewayRoom] = {}
        self._activating: dict[str, trio.Event] = {}
        # Notices for an event that arrived while a notice before them starts its room.
        self._held_notices: dict[str, list[Notice]] = {}
        self._forwarding = 0  # chat lines on their way to another owner (`_forward`)
        self._last_stray = -math.inf  # when the last chat line for an event not here came
        self._lookups: dict[str, SharedAnswer[str]] = {}  # owner lookups under way
        self._live: frozenset[str] = frozenset()
        self._counts: dict[str, int] = {}  # usersCount of events owned elsewhere
        self._last_renewal = -math.inf
        self._activations = itertools.count(1)  # numbers each claim of this node (`activate`)
        self.healthy = False  # Redis answered the last heartbeat
        self._store_health = StoreHealth(store, interval=self._ttl / 3,
                                         deadline=config.ready_timeout_seconds)
        self._aside = False  # cut off from the store: owns nothing, not in the nodes set
        self._unreachable = Trouble(log, "Redis unreachable")
        self._nursery: trio.Nursery | None = None
        # The node's cache of known users (vpiska/accounts.py; set by the server): it forgets
        # every account deleted anywhere in the cluster, or its tokens would keep working here.
        self.known_users: KnownUsers | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._bus.run)
            await self._bus.subscribe(redis.node_channel(self.node_id), self._node_message,
                                      lambda: None)
            await self._bus.subscribe(redis.CLUSTER_CHANNEL, self._cluster_message,
                                      self._cluster_renewed)
            await nursery.start(self._store_health.run)
            nursery.start_soon(self._follow_store)
            nursery.start_soon(self._rpc.run)
            nursery.start_soon(self._views.run)
            nursery.start_soon(self.owner_link.run)
            nursery.start_soon(self._map_notices.run)
            await self._beat(joining=True)
            nursery.start_soon(self._keep_alive)
            log.info("cluster node started", extra={"node": self.node_id,
                                                    "live_nodes": sorted(self._live)})
            task_status.started()

    # What vpiska/http asks of the cluster (the Rooms interface).

    @property
    def stopping(self) -> bool:
        return self._supervisor.stopping

    @property
    def ready(self) -> bool:
        """Redis answered the last heartbeat (this node can reach the others) and the store
        answers (it can do their work)."""
        return self.healthy and not self._aside

    async def open_event(self, owner_id: str, name: str, address: str,
                         coordinates: Coordinates) -> Event:
        event = await self._supervisor.create_event(owner_id, name, address, coordinates)
        await self.event_opened(event)
        return event

    def in_range(self, x_low: float, x_high: float, y_low: float, y_high: float) -> list[Spot]:
        return self._index.within(x_low, x_high, y_low, y_high)

    def live_stats(self) -> metrics.LiveStats:
        """This node's rooms, and the sockets it is the gateway of."""
        own = self._supervisor.live_stats()
        gateways = self._gateways.values()
        return metrics.LiveStats(
            open_events=own.open_events,
            sockets=own.sockets + sum(gateway.sockets for gateway in gateways),
            members=own.members,
            restarts=own.restarts)

    async def find(self, event_id: str) -> Room | GatewayRoom | None:
        """The room to talk to for `event_id`: ours if we own it, else a gateway to its owner;
        None if the event is unknown or closed."""
        room = self._supervisor.room(event_id)
        if room is not None:
            return room
        gateway = self._gateways.get(event_id)
        if gateway is not None:
            gateway.last_used = trio.current_time()
            return gateway
        event = await self._store.event(event_id)
        if event is None or not event.is_open:
            return None
        room = self._supervisor.room(event_id)  # activated while we read
        if room is not None:
            return room
        return self._gateways.setdefault(event_id, self._gateway(event))

    async def close_account(self, user_id: str) -> None:
        """Close the account's sockets here at once, then tell every node (which forgets the
        account and closes its own sockets of it). A node that misses the notice (its
        subscription lost) clears its cache of known users when it subscribes again."""
        self._close_account_here(user_id)
        await self._notify(protocol.AccountDeleted(user_id), "")

    def _close_account_here(self, user_id: str) -> None:
        if self.known_users is not None:
            self.known_users.forget(user_id)
        self._supervisor.close_sockets_of(user_id, CloseCode.ACCOUNT_DELETED)
        for gateway in self._gateways.values():
            gateway.close_user(user_id, CloseCode.ACCOUNT_DELETED)

    def users_count(self, event_id: str) -> int:
        room = self._supervisor.room(event_id)
        return room.users_count if room is not None else self._counts.get(event_id, 0)

    async def event_opened(self, event: Event) -> None:
        """A new event was stored here: every node's index learns it; its owner starts it."""
        self._index.put(event.id, event.name, event.coordinates)
        await self._notify(protocol.Created(event.name, event.coordinates.x,
                                            event.coordinates.y), event.id)
        target = designated(event.id, self._live | {self.node_id}) or self.node_id
        if target == self.node_id:
            await self.activate(event.id)
        else:  # it starts there now, not at its first request or the next reconcile
            with contextlib.suppress(Unreachable):
                await self._rpc.tell(target, protocol.Activate(), event.id)

    # Ownership.

    async def owner_of(self, event_id: str) -> str:
        """The node owning `event_id`, or the one designated to (it activates on the first
        request). Error handling: EventNotFound if no such open event; InternalError when
        Redis is unreachable.

        Callers that ask at once share one lookup: after a restart every client of an event
        reconnects at the same moment, and one Redis read per handshake (500 at once in the
        bench) slowed Redis' answers past their deadline, frames among them."""
        if self._supervisor.room(event_id) is not None:
            return self.node_id
        cached = self._owners.get(event_id)
        if cached is not None:
            return cached
        lookup = self._lookups.get(event_id)
        if lookup is None:
            lookup = self._lookups[event_id] = SharedAnswer[str]()
            assert self._nursery is not None
            try:
                self._nursery.start_soon(contained, f"look up the owner ({event_id})",
                                         lookup.fill, partial(self._look_up, event_id))
            except RuntimeError:  # the node is closing: look it up alone
                del self._lookups[event_id]
                return await self._find_owner(event_id)
        return await lookup.wait()

    async def _look_up(self, event_id: str) -> str:
        try:
            return await self._find_owner(event_id)
        finally:
            del self._lookups[event_id]  # later callers look it up again

    async def _find_owner(self, event_id: str) -> str:
        try:
            lease = await self._leases.holder(event_id)
        except redis.REDIS_ERRORS as error:
            self._unreachable.failed(error)
            raise DomainError(ErrorCode.INTERNAL_ERROR) from None
        self._unreachable.succeeded()
        if lease is not None:
            self._owners[event_id] = lease.node_id
            return lease.node_id
        event = await self._store.event(event_id)
        if event is None or not event.is_open:
            raise DomainError(ErrorCode.EVENT_NOT_FOUND)
        target = designated(event_id, self._live or {self.node_id}) or self.node_id
        if target == self.node_id:
            await self.activate(event_id)
        return target

    def forget_owner(self, event_id: str) -> None:
        self._owners.pop(event_id, None)

    def owner_is(self, event_id: str, node_id: str) -> None:
        if node_id != self.node_id:
            self._owners[event_id] = node_id

    async def activate(self, event_id: str) -> Room | None:
        """Own `event_id` if nobody does: the lease, a new epoch claimed in the store, the
        actor. The room, or None if another node holds it or the event is closed."""
        # Stepped aside, it could not claim the event nor write a line of it; stopping, a lease
        # taken now would only hold the next owner up.
        if self._aside or self.stopping:
            return None
        done = self._activating.get(event_id)
        if done is not None:  # another task of ours is at it
            await done.wait()
            return self._supervisor.room(event_id)
        done = self._activating[event_id] = trio.Event()
        try:
            if (room := self._supervisor.room(event_id)) is not None:
                return room
            for _ in range(2):  # a second time after raising an epoch counter Redis lost
                try:
                    lease = await self._leases.acquire(event_id)
                except redis.REDIS_ERRORS as error:
                    self._unreachable.failed(error)
                    return None
                if lease is None:
                    return None
                # Who claims: this node, in this activation. Its room's own restarts claim again
                # as it; a later activation of the same epoch here (Redis restarted, the
                # counter back) is a new room, whose frames would restart at seq 1 under an
                # epoch gateways have seen further on: refused, it takes an epoch above.
                claimant = f"{self.node_id}/{next(self._activations)}"
                try:
                    room = await self._supervisor.activate(event_id, lease.epoch, claimant,
                                                           self.owner_link, self._views,
                                                           ended=self.room_ended)
                    break
                except StaleEpoch as stale:  # Redis handed out an epoch the store has seen
                    await self._release(lease)
                    log.info("epoch counter behind the store (Redis restarted empty or failed"
                             " over); raised above it", extra={
                                 "event_id": event_id, "epoch": lease.epoch,
                                 "claimed": stale.claimed, "cause": str(stale)})
                    try:
                        await self._leases.raise_epoch(event_id, stale.claimed)
                    except redis.REDIS_ERRORS:
                        return None
            else:
                return None
            if room is None:  # closed meanwhile
                await self._release(lease)
                return None
            self._owned[event_id] = lease
            self._owners.pop(event_id, None)
            log.info("event activated", extra={"event_id": event_id, "epoch": lease.epoch})
            if self._aside:  # stepped aside while it was being claimed: not ours to keep
                self._fence([event_id], "store unreachable")
                await self._release(lease)
                return None
            return room
        finally:
            del self._activating[event_id]
            done.set()

    def room_ended(self, event_id: str) -> None:
        """A room of ours ended (closed, stopped, failed, fenced): free its lease."""
        self.owner_link.remote.pop(event_id, None)
        lease = self._owned.pop(event_id, None)
        if lease is not None and self._nursery is not None:
            self._nursery.start_soon(contained, "release a lease", self._release, lease)

    async def _release(self, lease: Lease) -> None:
        # Shielded: a room handed over at shutdown ends as the node's tasks are being
        # cancelled, and a release cut short there left the event to wait a whole TTL for its
        # next owner. Bounded like a beat, so that a Redis that does not answer cannot hold it.
        with trio.CancelScope(shield=True), trio.move_on_after(self._ttl / 3):
            try:
                await self._leases.release(lease)
            except redis.REDIS_ERRORS:
                pass  # it expires on its own

    def _fence(self, event_ids: Sequence[str], cause: str) -> None:
        for event_id in event_ids:
            self._owned.pop(event_id, None)
            self._supervisor.fence(event_id)
        if event_ids:
            log.warning("rooms fenced", extra={"events": list(event_ids), "cause": cause})

    # The heartbeat.

    async def _keep_alive(self) -> None:
        beats = 0
        while True:
            await trio.sleep(self._ttl / 3)
            beats += 1
            try:
                changed = await self._beat(leaving=self._aside)
                lost = await self._leases.renew(list(self._owned.values()))
                self._last_renewal = trio.current_time()
                self._unreachable.succeeded()
            except redis.REDIS_ERRORS as error:
                self.healthy = False
                self._unreachable.failed(error)
                if (self._owned
                        and trio.current_time() - self._last_renewal > self._ttl * 2 / 3):
                    self._fence(list(self._owned), f"Redis unreachable: {error!r}")
                continue
            self._fence([lease.event_id for lease in lost], "lease lost")
            self._forget_idle_gateways()
            if not self._aside and (changed or beats % RECONCILE_EVERY_BEATS == 0):
                await self._reconcile()

    async def _beat(self, *, joining: bool = False, leaving: bool = False) -> bool:
        """Beat (or leave: also every beat once the node is stopping, while it hands its
        rooms over, so that no node takes it for live again); True if the set of live nodes
        changed."""
        ttl_ms = int(self._ttl * 1000)
        leaving = leaving or self.stopping
        nodes: list[bytes] = await self._heartbeat(
            keys=[redis.NODES], args=[self.node_id, ttl_ms, "0" if leaving else "1"])
        live = frozenset(node.decode() for node in nodes)
        self.healthy = True
        if joining:
            self._last_renewal = trio.current_time()
        gone = self._live - live
        changed = live != self._live
        self._live = live
        for node in gone:
            self.owner_link.drop_gateway(node)
        return changed

    async def _reconcile(self) -> None:
        """Take over the orphans this node is designated for."""
        live = self._live | {self.node_id}
        mine = [event_id for event_id in self._index.event_ids()
                if event_id not in self._owned and designated(event_id, live) == self.node_id]
        if not mine:
            return
        try:
            holders = await self._client.mget([redis.lease_key(e) for e in mine])
        except redis.REDIS_ERRORS:
            return
        assert self._nursery is not None
        for event_id, holder in zip(mine, holders, strict=True):
            if holder is None:
                self._nursery.start_soon(contained, "activate", self.activate, event_id)

    # Cut off from the store.

    async def _follow_store(self) -> None:
        while True:
            await self._store_health.wait_until(reachable=False)
            await self._step_aside()
            await self._store_health.wait_until(reachable=True)
            await self._step_back()

    async def _step_aside(self) -> None:
        """The store does not answer: hand every event over now, well within a lease's TTL
        (the rooms would stall on their writes while this node kept renewing their leases),
        and serve nothing until it answers again."""
        self._aside = True
        log.warning("store unreachable: this node hands its events over and serves none "
                    "until the store answers again",
                    extra={"node": self.node_id, "cause": self._store_health.cause})
        leases = list(self._owned.values())
        self._fence([lease.event_id for lease in leases], "store unreachable")
        for gateway in list(self._gateways.values()):
            gateway.close(CloseCode.SERVICE_RESTART)
        try:
            await self._beat(leaving=True)
        except redis.REDIS_ERRORS as error:
            self._unreachable.failed(error)
        for lease in leases:  # free now, not at their expiry: the next owner takes them at once
            await self._release(lease)
        await self._notify(protocol.Left(self.node_id), "")

    async def _step_back(self) -> None:
        """The store answers again: join the cluster again (the other nodes designate this
        node again from their next beat on)."""
        self._aside = False
        log.info("store reachable again: this node serves events again",
                 extra={"node": self.node_id})
        try:
            await self._beat()
        except redis.REDIS_ERRORS as error:
            self._unreachable.failed(error)

    # Leaving.

    async def leave(self) -> None:
        """Hand every room over and leave the cluster (the node is shutting down).

        In this order: each room writes the chat lines it took in and says Handover (it
        ends); then its lease is released; then the others are told the node left. A lease
        released while its room still wrote let the next owner claim the event, and the
        store refused the old room's last lines (fenced): lines of sockets on other nodes,
        lost. Lines that reach this node after its room ended are sent on (`_forward`).
        How long the rooms may take is bounded by the server's shutdown grace."""
        leases = list(self._owned.values())
        try:
            await self._beat(leaving=True)
        except redis.REDIS_ERRORS:
            pass
        await self._supervisor.stop(hand_over=True)
        for gateway in list(self._gateways.values()):
            gateway.close(CloseCode.SERVICE_RESTART)
        await self._supervisor.ended.wait()
        with trio.move_on_after(self._ttl / 3):
            await self.owner_link.flush()
        # Also those of rooms that ended meanwhile, whose release (`room_ended`) may still be
        # on its way: the others look for a new owner as soon as they are told.
        for lease in {*leases, *self._owned.values()}:
            await self._release(lease)
        self._owned.clear()
        try:
            await self._notify(protocol.Left(self.node_id), "")
        except DomainError:
            pass
        if leases:
            await self._linger()
        log.info("left the cluster", extra={"node": self.node_id})

    async def _linger(self) -> None:
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

    # Messages.

    def _node_message(self, data: bytes) -> None:
        assert self._nursery is not None
        for message in decode_all(data):
            match message:
                case Answer():
                    self._rpc.received(message)
                case Request():
                    self._nursery.start_soon(contained, f"serve {message.op.op}", self._serve,
                                             message)
                case BadRequest():
                    self._nursery.start_soon(contained, "refuse a request",
                                             self.owner_link.refuse, message)
                case Notice():
                    self._take_notice(message)
                case _:
                    pass  # an event's message: not for a node's channel

    async def _serve(self, request: Request) -> None:
        if (self._supervisor.room(request.event_id) is None
                and not isinstance(request.op, protocol.Position)):
            await self._activate_if_designated(request.event_id)
        await self.owner_link.answer(request)

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
            assert self._nursery is not None
            self._held_notices[notice.event_id] = []
            self._nursery.start_soon(contained, f"take {notice.op.op}", self._take, notice)
        else:
            self._deliver_notice(notice)

    async def _take(self, notice: Notice) -> None:
        try:
            if isinstance(notice.op, protocol.Chat) and notice.op.forwarded:
                # Sent here as its owner: the lease decides.
                await self.activate(notice.event_id)
            else:
                await self._activate_if_designated(notice.event_id)
        finally:
            for each in [notice, *self._held_notices.pop(notice.event_id)]:
                self._deliver_notice(each)

    def _deliver_notice(self, notice: Notice) -> None:
        if isinstance(notice.op, protocol.Chat) and not self._takes_lines(notice.event_id):
            self._forward(notice.op, notice.event_id)
            return
        try:
            self.owner_link.received(notice)
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
        assert self._nursery is not None
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
        with trio.move_on_after(self._config.actor_reply_timeout_seconds):
            while True:
                try:
                    owner = await self.owner_of(event_id)
                except DomainError:
                    return  # closed meanwhile
                if self._takes_lines(event_id):
                    self.owner_link.received(Notice(line, event_id))
                    return
                if owner != self.node_id:
                    try:
                        await self._rpc.tell(owner, msgspec.structs.replace(
                            line, forwarded=line.forwarded + 1), event_id)
                        return
                    except Unreachable:
                        pass
                self.forget_owner(event_id)  # its lease may still name this node
                await trio.sleep(RETRY_SECONDS)
        log.info("chat line dropped: no owner reachable", extra={"event_id": event_id})

    async def _activate_if_designated(self, event_id: str) -> None:
        if designated(event_id, self._live | {self.node_id}) == self.node_id:
            await self.activate(event_id)

    def _cluster_message(self, data: bytes) -> None:
        message = decode(data)
        if not isinstance(message, Notice):
            return
        event_id = message.event_id
        match message.op:
            case protocol.Created(name, x, y):
                self._index.put(event_id, name, Coordinates(x, y))
            case protocol.Moved(x, y):
                self._index.move(event_id, Coordinates(x, y))
            case protocol.Closed():
                self._index.remove(event_id)
                self._counts.pop(event_id, None)
                self._owners.pop(event_id, None)
            case protocol.AccountDeleted(user_id):
                self._close_account_here(user_id)
            case protocol.Banned(user_id):
                gateway = self._gateways.get(event_id)
                if gateway is not None:
                    gateway.banned.add(user_id)
            case protocol.Counted(count):
                self._counts[event_id] = count
            case protocol.Left(node):
                # Gone now, not at this node's next beat: the events it handed over go to
                # the nodes designated without it, and its sockets (closed) leave the rooms.
                self._live = self._live - {node}
                self.owner_link.drop_gateway(node)
                self._owners = {e: n for e, n in self._owners.items() if n != node}
                assert self._nursery is not None
                self._nursery.start_soon(contained, "reconcile", self._reconcile)
            case protocol.Chat() | protocol.Leave() | protocol.Sync() | protocol.Activate():
                pass  # for an event's owner, on its node's channel
            case op:
                assert_never(op)

    def _cluster_renewed(self) -> None:
        if self.known_users is not None:  # an account_deleted notice may have been missed
            self.known_users.forget_all()
        assert self._nursery is not None
        self._nursery.start_soon(contained, "reload the map", self._reload_index)

    async def _reload_index(self) -> None:
        """Notices may have been missed: the store says which events are open."""
        events = await self._store.open_events()
        self._index.replace([(e.id, e.name, e.coordinates) for e in events])

    def notify_soon(self, op: protocol.ClusterNoticeOp, event_id: str) -> None:
        """Tell every node, from a task of the node's (callers may not wait)."""
        if self._nursery is not None:
            self._nursery.start_soon(contained, f"notify {op.op}", self._notify, op, event_id)

    async def _notify(self, op: protocol.ClusterNoticeOp, event_id: str) -> None:
        try:
            await self._bus.publish(redis.CLUSTER_CHANNEL, encode(Notice(op, event_id)))
        except redis.REDIS_ERRORS as error:
            self._unreachable.failed(error, notice=op.op)
        else:
            self._unreachable.succeeded()

    def _gateway(self, event: Event) -> GatewayRoom:
        assert self._nursery is not None
        gateway = GatewayRoom(
            event.id, event.owner_id, owners=self, bus=self._bus, rpc=self._rpc,
            views=self._views, store=self._store, nursery=self._nursery,
            reply_timeout=self._config.actor_reply_timeout_seconds,
            owner_silence=2 * self._ttl + self._config.actor_reply_timeout_seconds)
        gateway.banned.update(event.banned)
        return gateway

    def _forget_idle_gateways(self) -> None:
        """Gateways an HTTP request made and no socket uses, once they have been idle long
        enough that no caller can still be about to use one `find` gave it."""
        now = trio.current_time()
        for event_id, gateway in list(self._gateways.items()):
            if gateway.idle and now - gateway.last_used > GATEWAY_IDLE_SECONDS:
                del self._gateways[event_id]

