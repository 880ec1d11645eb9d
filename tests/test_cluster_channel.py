"""What a node does with the cluster channel's notices, and how it tells its own
(vpiska/cluster/cluster_channel.py), on a fake Redis and virtual time (tests/cluster_parts.py).

The notices are handed to the channel as the bus would, encoded as another node sends them.
tests/test_host_notices.py shows the host's and the deleted account's notices through a real
Redis.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers.cluster_parts import (
    TTL,
    beside_another_node,
    events_on_the_map,
    make_parts,
    open_event,
)
from vpiska.actors import CloseCode
from vpiska.actors.geo import Spot
from vpiska.cluster import protocol, redis
from vpiska.cluster.gateway import GatewayRoom
from vpiska.cluster.nodes import designated
from vpiska.cluster.protocol import Notice, decode
from vpiska.domain import Coordinates


def notice(op: str, event_id: str = "", **args: Any) -> bytes:
    """A cluster notice as nodes write it (`["n", op, event_id, {args}]`), well formed or not."""
    return json.dumps(["n", op, event_id, args], separators=(",", ":")).encode()


def spots(index: Any) -> list[Spot]:
    return list(index.within(-1000, 1000, -1000, 1000))


async def test_created_moved_and_closed_notices_keep_the_map_current(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    channel = parts.channel
    channel.cluster_message(notice("created", "e1", name="party", x=1.0, y=2.0))
    channel.cluster_message(notice("created", "e2", name="other", x=5.0, y=5.0))
    channel.cluster_message(notice("moved", "e1", x=3.0, y=4.0))
    channel.cluster_message(notice("counted", "e2", count=7))
    assert channel.counts == {"e2": 7}
    assert {(spot.event_id, spot.coordinates) for spot in spots(parts.index)} == {
        ("e1", Coordinates(3.0, 4.0)), ("e2", Coordinates(5.0, 5.0))}
    parts.ownership.owner_is("e2", "owner-node")
    channel.cluster_message(notice("closed", "e2"))
    assert [spot.event_id for spot in spots(parts.index)] == ["e1"]
    assert channel.counts == {}
    parts.redis.put(redis.lease_key("e2"), "lease-holder 2", TTL)
    assert await parts.ownership.owner_of("e2") == "lease-holder"  # not the cached owner


async def test_a_malformed_notice_changes_nothing_and_says_so_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts = make_parts(nursery)
    channel = parts.channel
    channel.cluster_message(notice("created", "e1", name="party", x="far away", y=2.0))
    channel.cluster_message(notice("counted", "e1", count=[1]))
    channel.cluster_message(notice("left"))
    channel.cluster_message(b"not even json")
    channel.cluster_message(notice("created", "e2", name="after", x=1.0, y=1.0))
    assert [spot.event_id for spot in spots(parts.index)] == ["e2"]
    assert channel.counts == {}
    assert parts.owner_link.dropped == []
    dropped = [r for r in caplog.records if r.message == "malformed cluster message dropped"]
    assert len(dropped) == 4  # one each, saying where it went wrong
    assert "$.x" in dropped[0].cause  # type: ignore[attr-defined]
    assert "$.count" in dropped[1].cause  # type: ignore[attr-defined]


async def test_a_renewed_subscription_reloads_the_map_from_the_store_and_forgets_every_account(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    """Notices published while the subscription was lost are gone."""
    parts = make_parts(nursery)
    missed = await open_event(parts.store)  # its created notice was missed
    parts.channel.cluster_message(notice("created", "gone", name="closed since", x=1.0, y=1.0))
    parts.channel.cluster_renewed()
    await trio.testing.wait_all_tasks_blocked()
    assert [spot.event_id for spot in spots(parts.index)] == [missed.id]
    assert parts.known_users.cleared == 1


async def test_a_node_that_left_is_gone_at_once_and_its_orphans_designated_here_start_here(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts, leaving = await beside_another_node(nursery)
    events = await events_on_the_map(parts, 12)
    theirs = [e for e in events if designated(e, {"node-a", "node-b"}) == "node-b"]
    assert theirs
    parts.ownership.owner_is(theirs[0], "node-b")
    await leaving.beat(leaving=True)  # its events handed over: their leases released
    parts.channel.cluster_message(notice("left", node="node-b"))
    assert parts.membership.live == {"node-a"}
    assert parts.owner_link.dropped == ["node-b"]  # its sockets leave this node's rooms
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(parts.supervisor.rooms) == sorted(events)  # all are this node's now
    assert await parts.ownership.owner_of(theirs[0]) == "node-a"


async def test_a_deleted_account_is_forgotten_and_its_sockets_here_closed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    parts.channel.cluster_message(notice("account_deleted", user="u-gone"))
    assert parts.known_users.forgotten == ["u-gone"]
    assert parts.supervisor.sockets_closed == [("u-gone", CloseCode.ACCOUNT_DELETED)]


async def test_a_banned_notice_reaches_the_gateway_to_its_event_only(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = make_parts(nursery)
    await parts.membership.beat()
    banned_from, other = [await open_event(parts.store) for _ in range(2)]
    for event in (banned_from, other):
        parts.redis.put(redis.lease_key(event.id), "owner-node 1", TTL)
    gateways = [await parts.routing.find(event.id) for event in (banned_from, other)]
    parts.channel.cluster_message(notice("banned", banned_from.id, user="u-banned"))
    parts.channel.cluster_message(notice("banned", "not-here", user="u-banned"))
    assert [g.banned for g in gateways if isinstance(g, GatewayRoom)] == [{"u-banned"}, set()]


async def test_notices_go_out_on_the_cluster_channel_and_an_outage_is_said_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    parts = make_parts(nursery)
    parts.channel.notify_soon(protocol.Moved(1.0, 2.0), "e1")
    await trio.testing.wait_all_tasks_blocked()
    [(channel, data)] = parts.redis.published
    assert channel == redis.CLUSTER_CHANNEL
    assert decode(data) == Notice(protocol.Moved(1.0, 2.0), "e1")
    parts.redis.cut()
    for _ in range(3):
        await parts.channel.notify(protocol.Closed(), "e1")
    parts.redis.heal()
    await parts.channel.notify(protocol.Closed(), "e1")
    assert [r.message for r in caplog.records] == ["Redis unreachable",
                                                   "Redis unreachable: over"]
