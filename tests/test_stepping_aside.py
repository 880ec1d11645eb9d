"""A cluster node whose store stops answering steps aside, and back once it answers: in one
process, with a real Redis and a store whose answers the test holds back.

(tests/test_partitions.py shows the same through a frozen network path, as clients see it.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import coredis
import pytest
import trio
import trio.testing

from tests.helpers.cluster_fixtures import RedisServer
from tests.helpers.cluster_state import eventually
from tests.helpers.server import make_config
from vpiska.actors import EventSupervisor
from vpiska.actors.geo import MapIndex
from vpiska.cluster import protocol, redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.map_notices import MapNotices
from vpiska.cluster.node import ClusterNode
from vpiska.cluster.protocol import Notice, decode
from vpiska.domain import Coordinates, Event, new_id, utc_now
from vpiska.store import MemoryStore

TTL = 0.6
READY_TIMEOUT = 0.2


class HeldStore(MemoryStore):
    """A MemoryStore whose pings wait while it is held (a database behind a frozen network
    path), and whose claims wait for `claims_free` once `hold_claims` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.free = trio.Event()
        self.free.set()
        self.hold_claims = False
        self.claiming = trio.Event()
        self.claims_free = trio.Event()

    def hold(self) -> None:
        self.free = trio.Event()

    async def ping(self) -> None:
        await self.free.wait()
        await super().ping()

    async def claim_event(self, event_id: str, epoch: int, claimant: str) -> Event | None:
        if self.hold_claims:
            self.claiming.set()
            await self.claims_free.wait()
        return await super().claim_event(event_id, epoch, claimant)


@pytest.fixture
async def node(redis_server: RedisServer, tmp_path: Path, nursery: trio.Nursery
               ) -> AsyncIterator[tuple[ClusterNode, HeldStore, coredis.Redis[bytes]]]:
    config = make_config(tmp_path, lease_ttl_seconds=TTL, ready_timeout_seconds=READY_TIMEOUT)
    store = HeldStore()
    async with redis.connect(redis_server.url) as client:
        bus, index = Bus(redis_server.url, client), MapIndex()
        map_notices = MapNotices(bus)
        supervisor = EventSupervisor(store, config, serve_all=False, index=index,
                                     map_publisher=map_notices)
        cluster_node = ClusterNode(config, store, supervisor, client, bus, index, map_notices)
        async with trio.open_nursery() as inner:
            await inner.start(supervisor.run)
            await inner.start(cluster_node.run)
            yield cluster_node, store, client
            inner.cancel_scope.cancel()


async def new_event(store: MemoryStore) -> str:
    event = Event(new_id(), new_id(), "party", "street 1", Coordinates(1, 2), utc_now())
    await store.add_event(event)
    return event.id


class Notices:
    """The cluster channel as the other nodes hear it. A node stepping aside says "left" last,
    once it has left the live set and freed its leases: what the test waits for."""

    def __init__(self) -> None:
        self.heard: list[Notice] = []
        self._more = trio.Event()

    def hear(self, data: bytes) -> None:
        message = decode(data)
        if isinstance(message, Notice):
            self.heard.append(message)
            self._more.set()
            self._more = trio.Event()

    async def wait_for_left(self, node_id: str) -> None:
        with trio.fail_after(30):  # generous: a loaded machine answers slowly
            while protocol.Left(node_id) not in (notice.op for notice in self.heard):
                await self._more.wait()


@pytest.fixture
async def notices(redis_server: RedisServer) -> AsyncIterator[Notices]:
    notices = Notices()
    async with redis.connect(redis_server.url) as client, trio.open_nursery() as listening:
        bus = Bus(redis_server.url, client)
        await listening.start(bus.run)
        await bus.subscribe(redis.CLUSTER_CHANNEL, notices.hear, lambda: None)
        yield notices
        listening.cancel_scope.cancel()


async def test_a_node_whose_store_stops_answering_hands_its_events_over_and_comes_back(
    node: tuple[ClusterNode, HeldStore, coredis.Redis[bytes]], notices: Notices
) -> None:
    cluster_node, store, client = node
    event_id = await new_event(store)
    assert await cluster_node.activate(event_id) is not None
    assert cluster_node.ready
    store.hold()
    held_at = trio.current_time()

    await notices.wait_for_left(cluster_node.node_id)
    assert not cluster_node.ready
    assert await client.get(redis.lease_key(event_id)) is None
    assert cluster_node.node_id.encode() not in await client.zrange(redis.NODES, 0, -1)
    # Handed over within the bound the cluster promises (it takes a beat and a ping's deadline).
    assert trio.current_time() - held_at < TTL + 2
    assert await cluster_node.activate(event_id) is None  # owns nothing new meanwhile
    store.free.set()

    async def back() -> bool:
        return (cluster_node.ready
                and cluster_node.node_id.encode() in await client.zrange(redis.NODES, 0, -1))

    await eventually(back)  # its beat, in Redis: nothing announces it
    assert await cluster_node.activate(event_id) is not None  # and owns events again


async def test_an_event_being_claimed_as_the_node_steps_aside_is_not_kept(
    node: tuple[ClusterNode, HeldStore, coredis.Redis[bytes]], notices: Notices
) -> None:
    cluster_node, store, client = node
    event_id = await new_event(store)
    store.hold_claims = True
    store.hold()
    activated: list[object] = []

    async def activate() -> None:
        activated.append(await cluster_node.activate(event_id))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(activate)
        await store.claiming.wait()
        await notices.wait_for_left(cluster_node.node_id)
        assert not cluster_node.ready
        store.claims_free.set()  # the claim is answered after the node stepped aside
    assert activated == [None]
    assert await client.get(redis.lease_key(event_id)) is None
