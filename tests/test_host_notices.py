"""What a node does with the cluster channel's notices of the host in charge and of leaving for
good (vpiska/cluster/node.py): `banned` reaches the node's gateway to the event (its handshakes
then get 403 without asking the owner), `account_deleted` makes the node forget the account
and close its sockets of it; a renewed subscription, which may have missed one, forgets every
account (tests/test_host_cluster.py, with Redis restarted). One node in this process over a
real Redis; the notices are published as another node would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import coredis
import pytest
import trio

from tests.helpers.cluster_fixtures import RedisServer
from tests.helpers.fakes import RecordingOutbox
from tests.helpers.server import make_config
from vpiska.actors import CloseCode, EventSupervisor, Member
from vpiska.actors.commands import Join, Snapshot
from vpiska.cluster import redis
from vpiska.cluster.gateway import GatewayRoom
from vpiska.cluster.node import ClusterIndex, ClusterNode
from vpiska.cluster.protocol import Notice, encode
from vpiska.domain import Coordinates, Event, Identity, new_id, utc_now
from vpiska.store import MemoryStore


class KnownUsers:
    """The node's cache of accounts, as notices reach it. The node handles notices one at a
    time in the order they were published, so an `account_deleted` published last, once
    forgotten here, is the sentinel for every notice before it (`handled`)."""

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


@pytest.fixture
async def node(redis_server: RedisServer, tmp_path: Path, nursery: trio.Nursery
               ) -> AsyncIterator[tuple[ClusterNode, MemoryStore, coredis.Redis[bytes]]]:
    config = make_config(tmp_path)
    store = MemoryStore()
    async with redis.connect(redis_server.url) as client:
        index = ClusterIndex()
        holder: list[ClusterNode] = []
        supervisor = EventSupervisor(store, config, serve_all=False, index=index,
                                     on_room_ended=lambda event_id: holder[0].room_ended(event_id))
        cluster_node = ClusterNode(config, store, supervisor, client, redis_server.url, index)
        holder.append(cluster_node)
        async with trio.open_nursery() as inner:
            await inner.start(supervisor.run)
            await inner.start(cluster_node.run)
            yield cluster_node, store, client
            inner.cancel_scope.cancel()


async def handled(cluster_node: ClusterNode, client: coredis.Redis[bytes]) -> None:
    """Return once the node has handled every notice published so far: a sentinel notice
    (an account nobody has) published after them has reached it."""
    known = cluster_node.known_users
    assert isinstance(known, KnownUsers)
    sentinel = new_id()
    await client.publish(redis.CLUSTER_CHANNEL,
                         encode(Notice("account_deleted", "", {"user": sentinel})))
    await known.wait_forgotten(sentinel)


async def gateway_of(cluster_node: ClusterNode, store: MemoryStore) -> GatewayRoom:
    """A gateway to an event the node does not own (nobody activated it)."""
    event = Event(new_id(), new_id(), "party", "street 1", Coordinates(1, 2), utc_now())
    await store.add_event(event)
    gateway = await cluster_node.find(event.id)
    assert isinstance(gateway, GatewayRoom)
    return gateway


async def test_a_banned_notice_reaches_the_nodes_gateway_to_the_event(
    node: tuple[ClusterNode, MemoryStore, coredis.Redis[bytes]]
) -> None:
    cluster_node, store, client = node
    cluster_node.known_users = KnownUsers()
    gateway = await gateway_of(cluster_node, store)
    other = await gateway_of(cluster_node, store)
    await client.publish(redis.CLUSTER_CHANNEL,
                         encode(Notice("banned", gateway.event_id, {"user": "u-banned"})))
    await handled(cluster_node, client)
    assert gateway.banned == {"u-banned"}
    assert other.banned == set()


async def test_an_account_deleted_notice_forgets_the_account_and_closes_its_sockets_here(
    node: tuple[ClusterNode, MemoryStore, coredis.Redis[bytes]]
) -> None:
    cluster_node, store, client = node
    known = KnownUsers()
    cluster_node.known_users = known
    event, gone = await store_event(store)
    room = await cluster_node.activate(event.id)
    assert room is not None
    leaving, staying = RecordingOutbox(), RecordingOutbox()
    for member in (Member(Identity(gone, "leaver", ""), leaving),
                   Member(Identity(new_id(), "stays", ""), staying)):
        await room.ask(lambda reply, m=member: Join(m, reply))  # type: ignore[misc]
    await client.publish(redis.CLUSTER_CHANNEL,
                         encode(Notice("account_deleted", "", {"user": gone})))
    await known.wait_forgotten(gone)
    await room.ask(Snapshot)  # through the room's actor: a close it was sent is done
    assert leaving.close_code == CloseCode.ACCOUNT_DELETED
    assert staying.close_code is None
    assert known.forgotten == [gone]


async def store_event(store: MemoryStore) -> tuple[Event, str]:
    event = Event(new_id(), new_id(), "party", "street 1", Coordinates(1, 2), utc_now())
    await store.add_event(event)
    return event, new_id()


async def test_a_malformed_notice_changes_nothing_and_the_node_goes_on(
    node: tuple[ClusterNode, MemoryStore, coredis.Redis[bytes]]
) -> None:
    cluster_node, store, client = node
    cluster_node.known_users = KnownUsers()
    gateway = await gateway_of(cluster_node, store)
    await client.publish(redis.CLUSTER_CHANNEL,
                         encode(Notice("banned", gateway.event_id, {"nobody": 1})))
    await client.publish(redis.CLUSTER_CHANNEL,
                         encode(Notice("account_deleted", "", {})))
    await client.publish(redis.CLUSTER_CHANNEL,
                         encode(Notice("banned", gateway.event_id, {"user": "after"})))
    await handled(cluster_node, client)
    assert gateway.banned == {"after"}

