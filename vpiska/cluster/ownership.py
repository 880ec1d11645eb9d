"""Which node owns an event, and this node's own: its leases, their renewal, its fencing.

Every third of the lease TTL (`keep_alive`) the node beats (membership.py), then:
- renews the leases of the events it owns; a lease it finds lost is fenced at once (the
  room stops, its sockets are told to reconnect with 1012);
- if it could not reach Redis for two thirds of the TTL, fences every room it owns before
  any lease could expire (self-fencing): another node may own them by the time it is back;
  a call that timed out only because this node's own loop was late (vpiska/loop_time.py: less
  than a command's timeout passed on the loop's time) is no outage: it is tried again at
  once, and the node stays ready. The fence still counts real time: the leases expire in
  Redis' time, however busy this node is;
- takes over the orphans it is designated for (rendezvous hashing over the live nodes,
  nodes.py), on a change of the live nodes and every RECONCILE_EVERY_BEATS beats.

An event nobody owns is also activated on demand: a request or a chat line for it goes to the
node it is designated for, which acquires the lease, claims the epoch in the store (from then
on the store refuses older owners' writes) and starts the actor. The owners of events owned
elsewhere are looked up in Redis (their lease) and cached until they do not answer as owners.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from functools import partial

import coredis
import trio

from vpiska.actors import EventSupervisor, Room
from vpiska.actors.geo import MapIndex
from vpiska.cluster import redis
from vpiska.cluster.contained import contained
from vpiska.cluster.leases import Lease, Leases
from vpiska.cluster.membership import Membership
from vpiska.cluster.nodes import designated
from vpiska.cluster.owner import OwnerLink
from vpiska.cluster.shared_answer import SharedAnswer
from vpiska.cluster.trouble import Trouble
from vpiska.cluster.views import ViewMirror
from vpiska.errors import DomainError, ErrorCode
from vpiska.loop_time import measured
from vpiska.store import StaleEpoch, Store

log = logging.getLogger(__name__)

# Every this many beats the node also looks for orphans it should own, in case a notice was
# missed (a node's death is noticed by its missing heartbeat, not by any message).
RECONCILE_EVERY_BEATS = 3


class Ownership:
    """The `Owners` of gateway.py, and the holder of this node's leases.

    Resource handling: `keep_alive` returns only when cancelled; lookups, activations of
    orphans and releases of ended rooms' leases run in `nursery` (the node's)."""

    def __init__(self, node_id: str, *, client: coredis.Redis[bytes], leases: Leases,
                 membership: Membership, supervisor: EventSupervisor, store: Store,
                 index: MapIndex, owner_link: OwnerLink, views: ViewMirror,
                 nursery: trio.Nursery, ttl: float, unreachable: Trouble) -> None:
        self.node_id = node_id
        self._client = client
        self._leases = leases
        self._membership = membership
        self._supervisor = supervisor
        self._store = store
        self._index = index
        self.owner_link = owner_link
        self._views = views
        self._nursery = nursery
        self._ttl = ttl
        self._unreachable = unreachable
        self._heard_late = Trouble(log, "Redis' answers heard late: this node's event loop is "
                                        "behind; not taken for an outage")
        self.owned: dict[str, Lease] = {}  # the leases of this node's rooms
        self._owners: dict[str, str] = {}  # cached owner node of events owned elsewhere
        self._activating: dict[str, trio.Event] = {}
        self._lookups: dict[str, SharedAnswer[str]] = {}  # owner lookups under way
        self._last_renewal = -math.inf
        self._activations = itertools.count(1)  # numbers each claim of this node (`activate`)
        self.aside = False  # cut off from the store: owns nothing, not in the nodes set

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
        target = designated(event_id, self._membership.live or {self.node_id}) or self.node_id
        if target == self.node_id:
            await self.activate(event_id)
        return target

    def forget_owner(self, event_id: str) -> None:
        self._owners.pop(event_id, None)

    def owner_is(self, event_id: str, node_id: str) -> None:
        if node_id != self.node_id:
            self._owners[event_id] = node_id

    def node_left(self, node: str) -> None:
        """`node` left the cluster: the events it owned go to the nodes designated without
        it, this one among them."""
        self._owners = {e: n for e, n in self._owners.items() if n != node}
        self._nursery.start_soon(contained, "reconcile", self.reconcile)

    async def activate(self, event_id: str) -> Room | None:
        """Own `event_id` if nobody does: the lease, a new epoch claimed in the store, the
        actor. The room, or None if another node holds it or the event is closed."""
        # Stepped aside, it could not claim the event nor write a line of it; stopping, a lease
        # taken now would only hold the next owner up.
        if self.aside or self._supervisor.stopping:
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
                    await self.release(lease)
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
                await self.release(lease)
                return None
            self.owned[event_id] = lease
            self._owners.pop(event_id, None)
            log.info("event activated", extra={"event_id": event_id, "epoch": lease.epoch})
            if self.aside:  # stepped aside while it was being claimed: not ours to keep
                self.fence([event_id], "store unreachable")
                await self.release(lease)
                return None
            return room
        finally:
            del self._activating[event_id]
            done.set()

    async def activate_if_designated(self, event_id: str) -> None:
        if designated(event_id, self._membership.live | {self.node_id}) == self.node_id:
            await self.activate(event_id)

    def room_ended(self, event_id: str) -> None:
        """A room of ours ended (closed, stopped, failed, fenced): free its lease."""
        self.owner_link.remote.pop(event_id, None)
        lease = self.owned.pop(event_id, None)
        if lease is not None:
            self._nursery.start_soon(contained, "release a lease", self.release, lease)

    async def release(self, lease: Lease) -> None:
        # Shielded: a room handed over at shutdown ends as the node's tasks are being
        # cancelled, and a release cut short there left the event to wait a whole TTL for its
        # next owner. Bounded like a beat, so that a Redis that does not answer cannot hold it.
        with trio.CancelScope(shield=True), trio.move_on_after(self._ttl / 3):
            try:
                await self._leases.release(lease)
            except redis.REDIS_ERRORS:
                pass  # it expires on its own

    def fence(self, event_ids: Sequence[str], cause: str) -> None:
        for event_id in event_ids:
            self.owned.pop(event_id, None)
            self._supervisor.fence(event_id)
        if event_ids:
            log.warning("rooms fenced", extra={"events": list(event_ids), "cause": cause})

    # The heartbeat.

    async def keep_alive(self) -> None:
        """Beat, renew, fence and take orphans over, every third of the TTL, from the node's
        joining beat (just answered) on."""
        beats = 0
        self._last_renewal = trio.current_time()
        again = False  # the last beat was heard late: beat again at once
        while True:
            if not again:
                await trio.sleep(self._ttl / 3)
                beats += 1
            try:
                async with measured() as span:
                    changed = await self._membership.beat(leaving=self.aside)
                    lost = await self._leases.renew(list(self.owned.values()))
                self._last_renewal = trio.current_time()
                self._unreachable.succeeded()
                if not again:  # on time at the first try: the late spell (if any) is over
                    self._heard_late.succeeded()
                again = False
            except redis.REDIS_ERRORS as error:
                again = (isinstance(error, TimeoutError)
                         and span.elapsed() < redis.COMMAND_TIMEOUT_SECONDS)
                if again:
                    self._heard_late.failed(error, lag=round(span.lag(), 3))
                else:
                    self._membership.healthy = False
                    self._unreachable.failed(error)
                # Heard late, it beats again at once: it fences only once its leases could
                # really have expired (another node may take them from then on).
                fence_after = self._ttl if again else self._ttl * 2 / 3
                if self.owned and trio.current_time() - self._last_renewal > fence_after:
                    self.fence(list(self.owned), f"Redis unreachable: {error!r}")
                continue
            self.fence([lease.event_id for lease in lost], "lease lost")
            if not self.aside and (changed or beats % RECONCILE_EVERY_BEATS == 0):
                await self.reconcile()

    async def reconcile(self) -> None:
        """Take over the orphans this node is designated for."""
        live = self._membership.live | {self.node_id}
        mine = [event_id for event_id in self._index.event_ids()
                if event_id not in self.owned and designated(event_id, live) == self.node_id]
        if not mine:
            return
        try:
            holders = await self._client.mget([redis.lease_key(e) for e in mine])
        except redis.REDIS_ERRORS:
            return
        for event_id, holder in zip(mine, holders, strict=True):
            if holder is None:
                self._nursery.start_soon(contained, "activate", self.activate, event_id)
