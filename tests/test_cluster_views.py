"""The view an owner keeps in Redis for the other nodes' `events/get` (vpiska/cluster/views.py),
against a real Redis: a reader takes it only under the lease it was written for, a write of
a fenced owner changes nothing, and a write tried again is the same write."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import coredis
import pytest
import trio

from tests.helpers.cluster_fixtures import RedisServer
from vpiska.actors import EventView
from vpiska.cluster import redis
from vpiska.cluster.leases import Lease, Leases
from vpiska.cluster.trouble import Trouble
from vpiska.cluster.views import ViewMirror, log
from vpiska.domain import Coordinates, Event, EventMedia
from vpiska.store import StaleEpoch

EVENT = Event(id="e1", owner_id="u1", name="party", address="here",
              coordinates=Coordinates(1.5, -2), created_at=datetime(2026, 1, 1, tzinfo=UTC),
              media=(EventMedia("m1", "image/png"),))


def line(text: str) -> str:
    return f'{{"userId":"u2","userName":"guest","userImageId":"","message":"{text}"}}'


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:
    async with redis.connect(redis_server.url) as client:
        yield client


@pytest.fixture
async def views(client: coredis.Redis[bytes], nursery: trio.Nursery) -> ViewMirror:
    mirror = ViewMirror(client, Trouble(log, "test"))
    nursery.start_soon(mirror.run)
    return mirror


async def owned(client: coredis.Redis[bytes], node: str) -> Lease:
    lease = await Leases(client, node, 600).acquire(EVENT.id)
    assert lease is not None
    return lease


async def test_a_view_reads_back_whole_under_its_lease(
    client: coredis.Redis[bytes], views: ViewMirror
) -> None:
    lease = await owned(client, "n1")
    assert await views.read(EVENT.id) is None  # nothing written yet: ask the owner
    view = EventView(EVENT, 2, 2, (line("a"), line("b")))
    await views.show(lease.epoch, view, 0)
    assert await views.read(EVENT.id) == view
    longer = EventView(EVENT, 3, 3, (line("a"), line("b"), line("c")))
    await views.show(lease.epoch, longer, 2)  # the new line only
    await views.show(lease.epoch, longer, 2)  # its answer lost, tried again: the same write
    assert await views.read(EVENT.id) == longer
    past_memory = EventView(EVENT, 3, 4, None)  # the chat is read from the store now
    await views.show(lease.epoch, past_memory, 3)
    assert await views.read(EVENT.id) == past_memory
    assert await client.exists([redis.chat_key(EVENT.id)]) == 0


async def test_many_events_read_at_once_each_get_their_own(
    client: coredis.Redis[bytes], views: ViewMirror
) -> None:
    shown: dict[str, EventView] = {}
    for n in range(40):
        event = Event(id=f"e{n}", owner_id="u1", name=f"party {n}", address="here",
                      coordinates=Coordinates(n, n), created_at=EVENT.created_at)
        lease = await Leases(client, "n1", 600).acquire(event.id)
        assert lease is not None
        shown[event.id] = EventView(event, n, 1, (line(str(n)),))
        await views.show(lease.epoch, shown[event.id], 0)
    read: dict[str, EventView | None] = {}

    async def get(event_id: str) -> None:
        read[event_id] = await views.read(event_id)

    async with trio.open_nursery() as readers:
        for event_id in [*shown, "unknown"]:
            readers.start_soon(get, event_id)
    assert read == shown | {"unknown": None}


async def test_a_view_of_an_older_owner_is_not_read_and_it_cannot_write_again(
    client: coredis.Redis[bytes], views: ViewMirror
) -> None:
    old = await owned(client, "n1")
    view = EventView(EVENT, 1, 0, ())
    await views.show(old.epoch, view, 0)
    await client.delete([redis.lease_key(EVENT.id)])  # its lease expired
    assert await views.read(EVENT.id) is None
    new = await owned(client, "n2")
    assert await views.read(EVENT.id) is None  # the new owner has not shown it yet
    with pytest.raises(StaleEpoch) as fenced:
        await views.show(old.epoch, EventView(EVENT, 5, 0, ()), 0)
    assert fenced.value.claimed == new.epoch
    assert await views.read(EVENT.id) is None
    await views.show(new.epoch, view, 0)
    assert await views.read(EVENT.id) == view


async def test_a_closed_event_leaves_no_view(
    client: coredis.Redis[bytes], views: ViewMirror
) -> None:
    lease = await owned(client, "n1")
    await views.show(lease.epoch, EventView(EVENT, 1, 1, (line("a"),)), 0)
    closed = dataclasses.replace(EVENT, is_open=False)
    await views.show(lease.epoch, EventView(closed, 0, 1, (line("a"),)), 1)
    assert await views.read(EVENT.id) is None
    assert await client.exists([redis.view_key(EVENT.id), redis.chat_key(EVENT.id)]) == 0


async def test_a_view_whose_lines_are_gone_is_not_read(
    client: coredis.Redis[bytes], views: ViewMirror
) -> None:
    lease = await owned(client, "n1")
    await views.show(lease.epoch, EventView(EVENT, 1, 2, (line("a"), line("b"))), 0)
    await client.delete([redis.chat_key(EVENT.id)])  # as Redis evicting it would
    assert await views.read(EVENT.id) is None
