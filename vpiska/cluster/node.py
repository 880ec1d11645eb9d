"""One node of the cluster: its parts, wired, and what the node does as a whole.

The parts, each a class given its collaborators (docs/cluster.md lists every module):
- membership.py: the heartbeat, and which nodes are alive;
- ownership.py: who owns an event; this node's leases, their renewal every third of the TTL,
  self-fencing, activation of what it is designated for;
- routing.py: which room a caller or another node's message goes to (a room here, a gateway
  to the owner, or on to the owner now), and the gateways;
- cluster_channel.py: the notices every node hears (the map, counts, bans, deleted accounts,
  a node that left).

What is left here involves them all. A node that cannot reach the store (`_follow_store`: its
ping, every third of the TTL, went unanswered for READY_TIMEOUT_SECONDS, as /readyz counts) can
write nothing, so it steps aside until the store answers again: it fences its rooms and
releases their leases (a healthy node takes each event over at once), leaves the nodes set (no
node designates it), closes its sockets with 1012 (they reconnect to a node that can serve
them), owns nothing new, and /readyz answers 503. Once the store answers, it joins again.

Leaving (SIGTERM): the node leaves the nodes set, hands every room over (each writes the lines
it took in, says Handover, its own sockets close with 1012), releases the leases only then
(the next owner cannot claim an event whose room still writes) and tells the others to look
for orphans now, not after a TTL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import coredis
import trio

from vpiska import metrics
from vpiska.actors import CloseCode, EventSupervisor, Room
from vpiska.actors.geo import MapIndex, Spot
from vpiska.cluster import protocol, redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.cluster_channel import ClusterChannel, KnownUsers
from vpiska.cluster.gateway import GatewayRoom
from vpiska.cluster.leases import Leases
from vpiska.cluster.map_notices import MapNotices
from vpiska.cluster.membership import Membership
from vpiska.cluster.nodes import designated, new_node_id
from vpiska.cluster.owner import OwnerLink
from vpiska.cluster.ownership import Ownership
from vpiska.cluster.routing import Routing
from vpiska.cluster.rpc import Rpc, Unreachable
from vpiska.cluster.trouble import Trouble
from vpiska.cluster.views import ViewMirror
from vpiska.config import Config
from vpiska.domain import Coordinates, Event
from vpiska.errors import DomainError
from vpiska.store import Store
from vpiska.store.health import StoreHealth

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Parts:
    """The parts that run tasks in the node's nursery, made once it is open (`run`)."""

    ownership: Ownership
    routing: Routing
    channel: ClusterChannel


class ClusterNode:
    """The `Rooms` of vpiska/http in a cluster (vpiska/actors/rooms.py).

    Resource handling: `run` owns every task of the node (the bus, the sender, the heartbeat)
    and returns only when cancelled; `leave` hands the rooms over first."""

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
        self._membership = Membership(client, self.node_id, self._ttl,
                                      stopping=lambda: supervisor.stopping,
                                      gone=self.owner_link.drop_gateway)
        self._index = index
        self._store_health = StoreHealth(store, interval=self._ttl / 3,
                                         deadline=config.ready_timeout_seconds)
        self._unreachable = Trouble(log, "Redis unreachable")
        self._parts: _Parts | None = None
        # The node's cache of known users (vpiska/accounts.py; set by the server).
        self._known_users: KnownUsers | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            parts = self._parts = self._make_parts(nursery)
            await nursery.start(self._bus.run)
            await self._bus.subscribe(redis.node_channel(self.node_id),
                                      parts.routing.node_message, lambda: None)
            await self._bus.subscribe(redis.CLUSTER_CHANNEL, parts.channel.cluster_message,
                                      parts.channel.cluster_renewed)
            await nursery.start(self._store_health.run)
            nursery.start_soon(self._follow_store)
            nursery.start_soon(self._rpc.run)
            nursery.start_soon(self._views.run)
            nursery.start_soon(self.owner_link.run)
            nursery.start_soon(self._map_notices.run)
            await self._membership.beat()
            nursery.start_soon(parts.ownership.keep_alive)
            nursery.start_soon(parts.routing.sweep)
            log.info("cluster node started", extra={"node": self.node_id,
                                                    "live_nodes": sorted(self._membership.live)})
            task_status.started()

    def _make_parts(self, nursery: trio.Nursery) -> _Parts:
        ownership = Ownership(
            self.node_id, client=self._client, leases=self._leases, membership=self._membership,
            supervisor=self._supervisor, store=self._store, index=self._index,
            owner_link=self.owner_link, views=self._views, nursery=nursery, ttl=self._ttl,
            unreachable=self._unreachable)
        routing = Routing(
            self.node_id, supervisor=self._supervisor, ownership=ownership,
            owner_link=self.owner_link, rpc=self._rpc, bus=self._bus, views=self._views,
            store=self._store, nursery=nursery,
            reply_timeout=self._config.actor_reply_timeout_seconds, ttl=self._ttl)
        channel = ClusterChannel(
            bus=self._bus, index=self._index, store=self._store, supervisor=self._supervisor,
            membership=self._membership, ownership=ownership, routing=routing,
            known_users=self._known_users, nursery=nursery, unreachable=self._unreachable)
        return _Parts(ownership, routing, channel)

    @property
    def _running(self) -> _Parts:
        assert self._parts is not None, "the node is not running (ClusterNode.run)"
        return self._parts

    @property
    def ownership(self) -> Ownership:
        return self._running.ownership

    @property
    def routing(self) -> Routing:
        return self._running.routing

    @property
    def known_users(self) -> KnownUsers | None:
        """The node's cache of known users: it forgets every account deleted anywhere in the
        cluster, or its tokens would keep working here."""
        return self._known_users

    @known_users.setter
    def known_users(self, known_users: KnownUsers | None) -> None:
        self._known_users = known_users
        if self._parts is not None:
            self._parts.channel.known_users = known_users

    # What vpiska/http asks of the cluster (the Rooms interface).

    @property
    def stopping(self) -> bool:
        return self._supervisor.stopping

    @property
    def ready(self) -> bool:
        """Redis answered the last heartbeat (this node can reach the others) and the store
        answers (it can do their work)."""
        return self._membership.healthy and not self._running.ownership.aside

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
        return metrics.LiveStats(
            open_events=own.open_events,
            sockets=own.sockets + self._running.routing.sockets,
            members=own.members,
            restarts=own.restarts)

    async def find(self, event_id: str) -> Room | GatewayRoom | None:
        return await self._running.routing.find(event_id)

    async def close_account(self, user_id: str) -> None:
        """Close the account's sockets here at once, then tell every node (which forgets the
        account and closes its own sockets of it): ClusterChannel.account_deleted."""
        await self._running.channel.account_deleted(user_id)

    def users_count(self, event_id: str) -> int:
        room = self._supervisor.room(event_id)
        return room.users_count if room is not None else self._running.channel.counts.get(
            event_id, 0)

    async def event_opened(self, event: Event) -> None:
        """A new event was stored here: every node's index learns it; its owner starts it."""
        self._index.put(event.id, event.name, event.coordinates)
        await self._running.channel.notify(
            protocol.Created(event.name, event.coordinates.x, event.coordinates.y), event.id)
        target = designated(event.id, self._membership.live | {self.node_id}) or self.node_id
        if target == self.node_id:
            await self.activate(event.id)
        else:  # it starts there now, not at its first request or the next reconcile
            with contextlib.suppress(Unreachable):
                await self._rpc.tell(target, protocol.Activate(), event.id)

    async def activate(self, event_id: str) -> Room | None:
        return await self._running.ownership.activate(event_id)

    def notify_soon(self, op: protocol.ClusterNoticeOp, event_id: str) -> None:
        """Tell every node, from a task of the node's (callers may not wait)."""
        if self._parts is not None:
            self._parts.channel.notify_soon(op, event_id)

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
        ownership = self._running.ownership
        ownership.aside = True
        log.warning("store unreachable: this node hands its events over and serves none "
                    "until the store answers again",
                    extra={"node": self.node_id, "cause": self._store_health.cause})
        leases = list(ownership.owned.values())
        ownership.fence([lease.event_id for lease in leases], "store unreachable")
        self._running.routing.close_gateways(CloseCode.SERVICE_RESTART)
        try:
            await self._membership.beat(leaving=True)
        except redis.REDIS_ERRORS as error:
            self._unreachable.failed(error)
        for lease in leases:  # free now, not at their expiry: the next owner takes them at once
            await ownership.release(lease)
        await self._running.channel.notify(protocol.Left(self.node_id), "")

    async def _step_back(self) -> None:
        """The store answers again: join the cluster again (the other nodes designate this
        node again from their next beat on)."""
        self._running.ownership.aside = False
        log.info("store reachable again: this node serves events again",
                 extra={"node": self.node_id})
        try:
            await self._membership.beat()
        except redis.REDIS_ERRORS as error:
            self._unreachable.failed(error)

    # Leaving.

    async def leave(self) -> None:
        """Hand every room over and leave the cluster (the node is shutting down).

        In this order: each room writes the chat lines it took in and says Handover (it
        ends); then its lease is released; then the others are told the node left. A lease
        released while its room still wrote let the next owner claim the event, and the
        store refused the old room's last lines (fenced): lines of sockets on other nodes,
        lost. Lines that reach this node after its room ended are sent on (routing.py).
        How long the rooms may take is bounded by the server's shutdown grace."""
        ownership = self._running.ownership
        leases = list(ownership.owned.values())
        try:
            await self._membership.beat(leaving=True)
        except redis.REDIS_ERRORS:
            pass
        await self._supervisor.stop(hand_over=True)
        self._running.routing.close_gateways(CloseCode.SERVICE_RESTART)
        await self._supervisor.ended.wait()
        with trio.move_on_after(self._ttl / 3):
            await self.owner_link.flush()
        # Also those of rooms that ended meanwhile, whose release (`room_ended`) may still be
        # on its way: the others look for a new owner as soon as they are told.
        for lease in {*leases, *ownership.owned.values()}:
            await ownership.release(lease)
        ownership.owned.clear()
        try:
            await self._running.channel.notify(protocol.Left(self.node_id), "")
        except DomainError:
            pass
        if leases:
            await self._running.routing.linger()
        log.info("left the cluster", extra={"node": self.node_id})
