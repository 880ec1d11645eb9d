"""What a node does with the cluster channel's notices of the host in charge and of leaving for
good (vpiska/cluster/node.py): `banned` reaches the node's gateway to the event (its handshakes
then get 403 without asking the owner), `account_deleted` makes the node forget the account
and close its sockets of it; a renewed subscription, which may have missed one, forgets every
account (tests/test_host_cluster.py, with Redis restarted). One node in this process over a
real Redis; the notices are published as another node would."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import coredis
import pytest
import trio

from tests.helpers.cluster_fixtures import RedisServer
from tests.helpers.cluster_parts import KnownUsers
from tests.helpers.fakes import RecordingOutbox
from tests.helpers.server import make_config
from vpiska.actors import CloseCode, EventSupervisor, Member
from vpiska.actors.commands import Join, Snapshot
from vpiska.actors.geo import MapIndex
from vpiska.cluster import protocol, redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.gateway import GatewayRoom
from vpiska.cluster.map_notices import MapNotices
from vpiska.cluster.node import ClusterNode
from vpiska.cluster.protocol import Answer, Notice, decode, encode
from vpiska.domain import Coordinates, Event, Identity, new_id, utc_now
from vpiska.store import MemoryStore


@pytest.fixture
async def node(redis_server: RedisServer, tmp_path: Path, nursery: trio.Nursery
               ) -> AsyncIterator[tuple[ClusterNode, MemoryStore, coredis.Redis[bytes]]]:
    config = make_config(tmp_path)
    store = MemoryStore()
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


async def handled(cluster_node: ClusterNode, client: coredis.Redis[bytes]) -> None:
    """Return once the node has handled every notice published so far: a sentinel notice
    (an account nobody has) published after them has reached it."""
    known = cluster_node.known_users
    assert isinstance(known, KnownUsers)
    sentinel = new_id()
    await client.publish(redis.CLUSTER_CHANNEL,
                         encode(Notice(protocol.AccountDeleted(sentinel), "")))
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
                         encode(Notice(protocol.Banned("u-banned"), gateway.event_id)))
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
                         encode(Notice(protocol.AccountDeleted(gone), "")))
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
    node: tuple[ClusterNode, MemoryStore, coredis.Redis[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster_node, store, client = node
    cluster_node.known_users = KnownUsers()
    gateway = await gateway_of(cluster_node, store)
    caplog.set_level(logging.WARNING, logger="vpiska.cluster.protocol")
    for malformed in (["n", "banned", gateway.event_id, {"nobody": 1}],
                      ["n", "account_deleted", "", {}]):
        await client.publish(redis.CLUSTER_CHANNEL, json.dumps(malformed))
    await client.publish(redis.CLUSTER_CHANNEL,
                         encode(Notice(protocol.Banned("after"), gateway.event_id)))
    await handled(cluster_node, client)
    assert gateway.banned == {"after"}
    dropped = [record.__dict__["cause"] for record in caplog.records
               if record.message == "malformed cluster message dropped"]
    assert dropped == ["Object missing required field `user`"] * 2



@pytest.mark.parametrize("request_body", [
    ["q", 1, "asker", "teleport", "event-1", {}],
    ["q", 1, "asker", "remove_chat", "event-1", {"by": "u1", "seq": "3"}],
], ids=["unknown-op", "wrong-type"])
async def test_a_request_whose_operation_the_node_cannot_read_is_answered_failed_at_once(
    node: tuple[ClusterNode, MemoryStore, coredis.Redis[bytes]], redis_server: RedisServer,
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, request_body: list[object],
) -> None:
    """An op a newer node knows, or arguments of the wrong type: the asker learns at once
    that it failed (and the node says why), rather than waiting out its deadline."""
    cluster_node, _, client = node
    caplog.set_level(logging.WARNING, logger="vpiska.cluster.owner")
    answers: list[bytes] = []
    answered = trio.Event()

    def on_answer(data: bytes) -> None:
        answers.append(data)
        answered.set()

    asker = Bus(redis_server.url, client)
    await nursery.start(asker.run)
    await asker.subscribe(redis.node_channel("asker"), on_answer, lambda: None)
    await client.publish(redis.node_channel(cluster_node.node_id), json.dumps(request_body))
    with trio.fail_after(10):
        await answered.wait()
    assert [decode(data) for data in answers] == [Answer(1, "failed", None)]
    [warning] = [r for r in caplog.records if r.message == "malformed request"]
    assert warning.__dict__["op"] == request_body[3]
