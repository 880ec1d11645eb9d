"""A cluster node's parts (vpiska/cluster/node.py) built on fakes, for their unit tests.

Real `Membership`, `Ownership`, `Routing`, `ClusterChannel` and `Leases` over a `FakeRedis`, a
real `MemoryStore` and map index;
fakes for what lies beyond them: the supervisor (rooms are records the test can look at), the
owner link (what reached the rooms) and the RPC (what was sent to which node). Everything runs
on the test's nursery and clock.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, cast

import trio

from tests.helpers.fakes import FakeRedis
from vpiska.actors import CloseCode
from vpiska.actors.geo import MapIndex
from vpiska.cluster.cluster_channel import ClusterChannel
from vpiska.cluster.leases import Leases
from vpiska.cluster.membership import Membership
from vpiska.cluster.ownership import Ownership
from vpiska.cluster.protocol import Answer, Notice, NoticeOp, Request
from vpiska.cluster.routing import Routing
from vpiska.cluster.rpc import Unreachable
from vpiska.cluster.trouble import Trouble
from vpiska.domain import Coordinates, Event, new_id, utc_now
from vpiska.store import MemoryStore, StaleEpoch

TTL = 3.0  # a beat every second of virtual time
REPLY_TIMEOUT = 10.0

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class FakeRoom:
    event_id: str
    epoch: int
    users_count: int = 0
    handing_over: bool = False


class FakeSupervisor:
    """The node's rooms: `activate` makes one (while `open` is set; a test can hold it), as
    the store allows (`closed`: events closed there; `claimed`: an epoch the store has seen);
    `fence` ends one and notes when."""

    def __init__(self) -> None:
        self.rooms: dict[str, FakeRoom] = {}
        self.claims: list[tuple[str, int, str]] = []
        self.fenced: list[tuple[str, float]] = []
        self.sockets_closed: list[tuple[str, CloseCode]] = []
        self.closed: set[str] = set()
        self.claimed: dict[str, int] = {}
        self.open = trio.Event()
        self.open.set()
        self.stopping = False

    def room(self, event_id: str) -> FakeRoom | None:
        return self.rooms.get(event_id)

    async def activate(self, event_id: str, epoch: int, claimant: str, publisher: Any,
                       mirror: Any, *, ended: Callable[[str], None]) -> FakeRoom | None:
        self.claims.append((event_id, epoch, claimant))
        await self.open.wait()
        claimed = self.claimed.get(event_id, 0)
        if epoch <= claimed:
            raise StaleEpoch(event_id, epoch, claimed)
        if event_id in self.closed:
            return None
        room = self.rooms[event_id] = FakeRoom(event_id, epoch)
        return room

    def fence(self, event_id: str) -> None:
        del self.rooms[event_id]
        self.fenced.append((event_id, trio.current_time()))

    def close_sockets_of(self, user_id: str, code: CloseCode) -> None:
        self.sockets_closed.append((user_id, code))


class FakeOwnerLink:
    """What reached the rooms here: notices, requests answered, gateways dropped."""

    def __init__(self) -> None:
        self.remote: dict[str, dict[str, Any]] = {}
        self.received_notices: list[Notice] = []
        self.answered: list[Request] = []
        self.dropped: list[str] = []

    def received(self, notice: Notice) -> None:
        self.received_notices.append(notice)

    async def answer(self, request: Request) -> None:
        self.answered.append(request)

    def drop_gateway(self, node: str) -> None:
        self.dropped.append(node)


class FakeRpc:
    """Notices sent to other nodes; one in `deaf` does not listen (Unreachable)."""

    def __init__(self) -> None:
        self.told: list[tuple[str, NoticeOp, str]] = []
        self.replies: list[Answer] = []
        self.deaf: set[str] = set()

    async def tell(self, node: str, op: NoticeOp, event_id: str) -> None:
        await trio.lowlevel.checkpoint()
        if node in self.deaf:
            raise Unreachable(f"node {node} is not listening")
        self.told.append((node, op, event_id))

    def received(self, reply: Answer) -> None:
        self.replies.append(reply)


class FakeBus:
    """Notices this node published on a channel."""

    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis

    async def publish(self, channel: str, data: bytes) -> int:
        return await self._redis.publish(channel, data)


class KnownUsers:
    """A node's cache of accounts, as notices reach it. A node handles notices one at a time in
    the order they were published, so an `account_deleted` published last, once forgotten
    here, is the sentinel for every notice before it (`wait_forgotten`)."""

    def __init__(self) -> None:
        self.forgotten: list[str] = []
        self.cleared = 0
        self._forgot = trio.Event()

    def forget(self, user_id: str) -> None:
        self.forgotten.append(user_id)
        self._forgot.set()
        self._forgot = trio.Event()

    async def wait_forgotten(self, user_id: str) -> None:
        with trio.fail_after(30):  # the notice comes back through Redis, a process of its own
            while user_id not in self.forgotten:
                await self._forgot.wait()

    def forget_all(self) -> None:
        self.cleared += 1


@dataclasses.dataclass
class Parts:
    """One node's parts and the fakes around them."""

    node_id: str
    redis: FakeRedis
    store: MemoryStore
    index: MapIndex
    supervisor: FakeSupervisor
    owner_link: FakeOwnerLink
    rpc: FakeRpc
    known_users: KnownUsers
    membership: Membership
    ownership: Ownership
    routing: Routing
    channel: ClusterChannel


def make_parts(nursery: trio.Nursery, node_id: str = "this-node", *,
               redis: FakeRedis | None = None, store: MemoryStore | None = None) -> Parts:
    """A node's parts on `redis` and `store` (new ones if not given: pass another node's to
    share them)."""
    redis = FakeRedis() if redis is None else redis
    store = MemoryStore() if store is None else store
    index = MapIndex()
    supervisor = FakeSupervisor()
    owner_link = FakeOwnerLink()
    rpc = FakeRpc()
    known_users = KnownUsers()
    client: Any = redis
    unreachable = Trouble(log, "Redis unreachable")
    membership = Membership(client, node_id, TTL, stopping=lambda: supervisor.stopping,
                            gone=owner_link.drop_gateway)
    ownership = Ownership(
        node_id, client=client, leases=Leases(client, node_id, TTL), membership=membership,
        supervisor=cast(Any, supervisor), store=store, index=index,
        owner_link=cast(Any, owner_link), views=cast(Any, None), nursery=nursery, ttl=TTL,
        unreachable=unreachable)
    routing = Routing(
        node_id, supervisor=cast(Any, supervisor), ownership=ownership,
        owner_link=cast(Any, owner_link), rpc=cast(Any, rpc), bus=cast(Any, FakeBus(redis)),
        views=cast(Any, None), store=store, nursery=nursery, reply_timeout=REPLY_TIMEOUT,
        ttl=TTL)
    channel = ClusterChannel(
        bus=cast(Any, FakeBus(redis)), index=index, store=store,
        supervisor=cast(Any, supervisor), membership=membership, ownership=ownership,
        routing=routing, known_users=known_users, nursery=nursery, unreachable=unreachable)
    return Parts(node_id, redis, store, index, supervisor, owner_link, rpc, known_users,
                 membership, ownership, routing, channel)


async def open_event(store: MemoryStore, index: MapIndex | None = None) -> Event:
    """A new open event in the store (and on the map, if given), owned by nobody yet."""
    event = Event(new_id(), new_id(), "party", "street 1", Coordinates(1, 2), utc_now())
    await store.add_event(event)
    if index is not None:
        index.put(event.id, event.name, event.coordinates)
    return event


async def beside_another_node(nursery: trio.Nursery) -> tuple[Parts, Membership]:
    """The parts of node-a, and the membership of node-b on the same Redis: both live."""
    parts = make_parts(nursery, "node-a")
    client: Any = parts.redis
    other = Membership(client, "node-b", TTL, stopping=lambda: False, gone=lambda node: None)
    await other.beat()
    await parts.membership.beat()
    return parts, other


async def events_on_the_map(parts: Parts, count: int) -> list[str]:
    """`count` new open events, in the store and on the node's map, owned by nobody yet."""
    return [(await open_event(parts.store, parts.index)).id for _ in range(count)]
