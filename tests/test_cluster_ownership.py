"""Leases, their renewal and fencing, activation and owner lookups (vpiska/cluster/ownership.py),
on a fake Redis, a fake supervisor and virtual time (tests/cluster_parts.py).

With a TTL of 3 s the node beats and renews every second; a test cuts Redis off between two
beats and reads off the clock when the node fenced its rooms.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers.cluster_parts import (
    TTL,
    Parts,
    beside_another_node,
    events_on_the_map,
    make_parts,
    open_event,
)
from vpiska.cluster import redis
from vpiska.cluster.leases import Leases
from vpiska.cluster.nodes import designated


async def owning(parts: Parts) -> str:
    """An open event on the map that the node now owns, its heartbeat running from now on."""
    event = await open_event(parts.store, parts.index)
    await parts.membership.beat()
    assert await parts.ownership.activate(event.id) is not None
    return event.id


async def test_a_node_cut_from_redis_fences_its_rooms_before_their_leases_could_pass_on(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    event_id = await owning(parts)
    nursery.start_soon(parts.ownership.keep_alive)
    await trio.sleep(2.5)  # two renewals, at 1 and 2
    expires = parts.redis.expiry(redis.lease_key(event_id))
    parts.redis.cut()
    await trio.sleep(TTL / 3)  # one beat missed: a blip, not a partition
    assert parts.supervisor.room(event_id) is not None
    await trio.sleep(TTL * 2 / 3)  # past the lease's expiry
    [(fenced, fenced_at)] = parts.supervisor.fenced
    assert fenced == event_id
    assert fenced_at <= expires  # no other node could have its lease yet
    assert parts.ownership.owned == {}
    assert not parts.membership.healthy


async def test_a_node_that_missed_one_beat_keeps_its_rooms(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    event_id = await owning(parts)
    nursery.start_soon(parts.ownership.keep_alive)
    await trio.sleep(2.5)
    parts.redis.cut()
    await trio.sleep(TTL / 3)  # the beat at 3 fails
    parts.redis.heal()
    await trio.sleep(TTL)  # those from 4 on are answered, before the lease expires at 5
    assert parts.supervisor.fenced == []
    assert parts.redis.value(redis.lease_key(event_id)) is not None
    assert list(parts.ownership.owned) == [event_id]
    assert parts.membership.healthy


async def test_a_lease_another_node_took_is_fenced_at_the_next_beat(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    event_id = await owning(parts)
    nursery.start_soon(parts.ownership.keep_alive)
    await trio.sleep(1.5)
    parts.redis.delete(redis.lease_key(event_id))  # expired while this node was paused
    client: Any = parts.redis
    assert await Leases(client, "other-node", TTL).acquire(event_id) is not None
    taken_at = trio.current_time()
    await trio.sleep(TTL / 3)
    [(fenced, fenced_at)] = parts.supervisor.fenced
    assert fenced == event_id
    assert fenced_at - taken_at <= TTL / 3
    assert parts.ownership.owned == {}


async def test_reconcile_activates_the_orphans_designated_here_and_only_those(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts, _ = await beside_another_node(nursery)
    events = await events_on_the_map(parts, 24)
    here = [e for e in events if designated(e, {"node-a", "node-b"}) == "node-a"]
    there = [e for e in events if e not in here]
    assert len(here) >= 2
    assert there
    held = here[0]  # an event of node-a's share that node-b still holds (it took it first)
    parts.redis.put(redis.lease_key(held), "node-b 1", TTL)
    await parts.ownership.reconcile()
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(claim[0] for claim in parts.supervisor.claims) == sorted(here[1:])
    assert sorted(parts.ownership.owned) == sorted(here[1:])


async def test_owner_lookups_at_once_share_one_redis_read_and_are_cached_until_forgotten(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    event = await open_event(parts.store, parts.index)
    parts.redis.put(redis.lease_key(event.id), "other-node 4", TTL)
    owners: list[str] = []

    async def look_up() -> None:
        owners.append(await parts.ownership.owner_of(event.id))

    async with trio.open_nursery() as lookups:
        for _ in range(5):
            lookups.start_soon(look_up)
    assert owners == ["other-node"] * 5
    assert parts.redis.calls["get"] == 1
    assert await parts.ownership.owner_of(event.id) == "other-node"
    assert parts.redis.calls["get"] == 1  # cached
    parts.ownership.forget_owner(event.id)  # it did not answer as the owner
    assert await parts.ownership.owner_of(event.id) == "other-node"
    assert parts.redis.calls["get"] == 2


async def test_an_orphan_asked_for_is_activated_by_the_node_it_is_designated_for(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    event = await open_event(parts.store, parts.index)
    await parts.membership.beat()  # alone: every event is designated here
    assert await parts.ownership.owner_of(event.id) == parts.node_id
    room = parts.supervisor.room(event.id)
    assert room is not None
    assert room.epoch == 1
    assert parts.redis.value(redis.lease_key(event.id)) == f"{parts.node_id} 1".encode()


async def test_an_epoch_the_store_has_seen_is_released_raised_above_and_claimed_anew(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    """Redis restarted empty: its counter hands out epoch 1 again, the store has seen 5."""
    parts = make_parts(nursery)
    event = await open_event(parts.store, parts.index)
    parts.supervisor.claimed[event.id] = 5
    room = await parts.ownership.activate(event.id)
    assert room is not None
    assert room.epoch == 6
    assert [(epoch, claimant) for _, epoch, claimant in parts.supervisor.claims] == [
        (1, f"{parts.node_id}/1"), (6, f"{parts.node_id}/2")]


async def test_a_node_stepped_aside_takes_no_lease(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    event = await open_event(parts.store, parts.index)
    parts.ownership.aside = True
    assert await parts.ownership.activate(event.id) is None
    assert parts.redis.value(redis.lease_key(event.id)) is None
    assert parts.supervisor.claims == []


async def test_activations_of_one_event_at_once_start_one_room(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    event = await open_event(parts.store, parts.index)
    parts.supervisor.open = trio.Event()  # the first claim waits for the store
    rooms: list[object] = []

    async def activate() -> None:
        rooms.append(await parts.ownership.activate(event.id))

    async with trio.open_nursery() as activations:
        for _ in range(3):
            activations.start_soon(activate)
        await trio.testing.wait_all_tasks_blocked()
        parts.supervisor.open.set()
    assert len(parts.supervisor.claims) == 1
    assert len({id(room) for room in rooms}) == 1
    assert rooms[0] is not None


async def test_the_lease_of_a_room_that_ended_is_released(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    event_id = await owning(parts)
    parts.ownership.room_ended(event_id)
    await trio.testing.wait_all_tasks_blocked()
    assert parts.redis.value(redis.lease_key(event_id)) is None
    assert parts.ownership.owned == {}


async def test_a_node_whose_loop_is_late_does_not_take_redis_for_unreachable(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts = make_parts(nursery)
    event_id = await owning(parts)
    nursery.start_soon(parts.ownership.keep_alive)
    parts.redis.answer_delay = 0.1  # Redis answers each call in time

    async def busy_loop() -> None:
        """Once a beat, while a call waits for its answer, the loop is busy elsewhere for
        longer than the call's timeout: the answer is heard after it."""
        while True:
            await parts.redis.answering.wait()
            autojump_clock.jump(redis.COMMAND_TIMEOUT_SECONDS * 1.5)
            await trio.sleep(TTL / 3)

    nursery.start_soon(busy_loop)
    await trio.sleep(20 * TTL)
    assert parts.supervisor.fenced == []
    assert list(parts.ownership.owned) == [event_id]
    assert parts.redis.value(redis.lease_key(event_id)) is not None
    assert parts.membership.healthy
    assert "Redis unreachable" not in caplog.messages
    assert caplog.messages.count("Redis' answers heard late: this node's event loop is behind;"
                                 " not taken for an outage") == 1


async def test_a_redis_that_times_out_on_a_loop_on_time_fences_the_rooms(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    event_id = await owning(parts)
    nursery.start_soon(parts.ownership.keep_alive)
    await trio.sleep(2.5)  # renewed at 1 and 2: the lease expires at 5
    parts.redis.answer_delay = 60.0  # Redis takes every call and answers none
    await trio.sleep(2 * TTL)
    [(fenced, fenced_at)] = parts.supervisor.fenced
    assert fenced == event_id
    assert fenced_at <= 2 + TTL + redis.COMMAND_TIMEOUT_SECONDS
    assert not parts.membership.healthy
