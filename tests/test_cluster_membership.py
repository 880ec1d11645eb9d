"""Which nodes are alive (vpiska/cluster/membership.py), on a fake Redis and virtual time.

Two nodes beat in one `FakeRedis` every third of the TTL; one stops. The other takes it for
alive until its last beat is a TTL old, then for gone, and forgets it as a gateway (its
sockets leave the rooms). A node that says it left, or beats while stopping, is gone at once.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers.fakes import FakeRedis
from vpiska.cluster.membership import Membership
from vpiska.cluster.redis import REDIS_ERRORS

TTL = 3.0


class Node:
    """A node's membership, and the nodes it was told are gone."""

    def __init__(self, redis: FakeRedis, node_id: str) -> None:
        self.gone: list[tuple[str, float]] = []
        self.stopping = False
        client: Any = redis
        self.membership = Membership(
            client, node_id, TTL, stopping=lambda: self.stopping,
            gone=lambda node: self.gone.append((node, trio.current_time())))


async def both_beating() -> tuple[Node, Node]:
    """Nodes a and b on one Redis, each having beaten once: both live."""
    redis = FakeRedis()
    a, b = Node(redis, "a"), Node(redis, "b")
    await b.membership.beat()
    await a.membership.beat()
    return a, b


async def test_a_node_that_stops_beating_is_gone_once_its_last_beat_is_a_ttl_old(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, _ = await both_beating()
    assert a.membership.live == {"a", "b"}
    last_beat_of_b = trio.current_time()
    while not a.gone:  # b beats no more; a beats every third of the TTL
        await trio.sleep(TTL / 3)
        changed = await a.membership.beat()
        assert changed == bool(a.gone)
    node, when = a.gone[0]
    assert node == "b"
    assert a.membership.live == {"a"}
    assert TTL <= when - last_beat_of_b <= TTL + TTL / 3  # not before, at the first beat after


async def test_a_node_that_said_it_left_is_gone_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = await both_beating()
    a.membership.left("b")
    assert a.membership.live == {"a"}
    assert a.gone == [("b", trio.current_time())]


async def test_a_stopping_node_beats_out_of_the_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While it hands its rooms over, no node may take it for live again."""
    a, b = await both_beating()
    b.stopping = True
    await b.membership.beat()
    assert await a.membership.beat()
    assert a.membership.live == {"a"}
    assert b.membership.live == {"a"}


async def test_a_beat_redis_does_not_answer_escapes_and_leaves_the_live_nodes_as_they_were(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redis = FakeRedis()
    a = Node(redis, "a")
    await a.membership.beat()
    assert a.membership.healthy
    redis.cut()
    with pytest.raises(REDIS_ERRORS):
        await a.membership.beat()
    assert a.membership.live == {"a"}
    assert a.gone == []
