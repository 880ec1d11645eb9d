"""Partitions: the network path between the node that owns an event and Redis, or between it
and MongoDB, frozen under chat load (connections stay open, no byte passes), then healed.

The members are Followers (tests/helpers/followers.py), some on every node. What must hold:
the members on the healthy nodes get lines back within the lease TTL + 2 s of the freeze (the
cut node hands its events over, a healthy one serves them); the cut node stays up, says once,
in plain words, what happened and that it is over, and answers /readyz 503 meanwhile; after
the heal it serves events again without a restart; no line any member saw is lost, none is
stored twice, every member saw one order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import trio.lowlevel

from tests.helpers.clients import token_for
from tests.helpers.cluster_fixtures import Cluster, Node, RedisServer, StartCluster, StartProxy
from tests.helpers.cluster_state import (
    TTL,
    UNLIMITED,
    diagnosed,
    eventually,
    owner_now,
    owner_of,
    ready,
)
from tests.helpers.followers import Follower, settle_and_check, start_followers, talking
from tests.helpers.mongodb_fixtures import new_database_name
from tests.helpers.server import Server
from tests.helpers.tcp_proxy import TcpProxy

# The longest a member on a healthy node may go without a line once the owner is cut off:
# the hand-over's bound (TTL + 2 s), and a second for the new owner's catch-up on a loaded
# machine.
HANDOVER_SECONDS = TTL + 2
SILENCE_SECONDS = HANDOVER_SECONDS + 1
# How the path fails: frozen (connections stay open, no byte passes; a thaw delivers what
# was held), or cut (every connection reset, new ones refused until it is restored).
FAULTS = pytest.mark.parametrize("fault", ["frozen", "cut"])


async def open_event(server: Server) -> str:
    """A new event, opened through `server` by a new owner."""
    _, token = await token_for(server)
    event = await server.ok("/api/v1/events/create", {
        "name": "party", "address": "street 1", "coordinates": {"x": 10, "y": 20}}, token=token)
    return str(event["id"])


async def event_owned_by(target: Node, servers: list[Server], redis_server: RedisServer,
                         group: Cluster) -> str:
    """An event `target` owns: new events are opened until rendezvous hashing places one
    there (each lands on one of the live nodes; a third of them, with three)."""
    for _ in range(40):
        event_id = await open_event(servers[0])
        if await owner_now(redis_server, event_id, group) is target:
            return event_id
    raise AssertionError(f"{target.name} was given none of 40 events")


def longest_silence(follower: Follower, start: float, end: float) -> float:
    """The longest time between `start` and `end` in which `follower` was shown no line."""
    times = sorted(t for t in follower.seen_at.values() if start < t <= end)
    marks = [start, *times, end]
    return max(later - earlier for earlier, later in zip(marks, marks[1:], strict=False))


def logged(node: Node, event: str) -> list[dict[str, Any]]:
    return [line for line in node.lines() if line["event"] == event]


async def partition_under_load(
    group: Cluster, redis_server: RedisServer, proxy: TcpProxy, cut: Node,
    nursery: trio.Nursery, fault: str, *, says_cut: Callable[[], bool],
    says_over: Callable[[], bool],
) -> None:
    """The scene both partitions share: followers on every node, the cut node owning their
    event; the freeze under load, the checks during it, the heal, the checks after."""
    servers = [await group.server(node) for node in group.nodes]
    cut_index = group.nodes.index(cut)
    event_id = await event_owned_by(cut, servers, redis_server, group)
    alive = [True] * len(servers)
    followers = await start_followers(nursery, servers, event_id, 2, alive)
    healthy = [f for f in followers if f.home != cut_index]
    cut_off = [f for f in followers if f.home == cut_index]
    pid = cut.pid
    async with talking(followers, servers, alive):
        for follower in followers:
            await follower.wait_for(20)
        alive[cut_index] = False  # a load balancer asks /readyz; the followers do not
        frozen_at = trio.current_time()
        if fault == "frozen":
            proxy.freeze()
        else:
            proxy.cut()

        async def unready() -> bool:
            return await ready(servers[cut_index]) == 503

        await eventually(unready, HANDOVER_SECONDS + 5)

        async def told_to_reconnect() -> bool:  # the cut node's own members, during the cut
            await trio.lowlevel.checkpoint()
            return all(f.closes for f in cut_off)

        await eventually(told_to_reconnect, HANDOVER_SECONDS + 5)
        assert await ready(servers[0]) == 200  # (the cut node is the last one)

        async def taken_over() -> bool:
            return await owner_of(redis_server, event_id, group) not in (None, cut)

        await eventually(taken_over, HANDOVER_SECONDS + 5)
        for follower in healthy:  # the room goes on for the healthy nodes' members
            await follower.wait_for(len(follower.lines) + 40)
        assert says_cut()
        if fault == "frozen":
            proxy.thaw()
        else:
            proxy.restore()
        thawed_at = trio.current_time()

        async def ready_again() -> bool:
            return await ready(servers[cut_index]) == 200

        await eventually(ready_again, 30)
        alive[cut_index] = True
        for follower in followers:
            await follower.wait_for(len(follower.lines) + 20)
    silences = {f.name: round(longest_silence(f, frozen_at, thawed_at), 2) for f in healthy}
    print(f"longest silence of each member on a healthy node during the partition: {silences}")
    assert max(silences.values()) < SILENCE_SECONDS, silences
    await settle_and_check(followers, servers, event_id)
    assert cut.pid == pid  # no restart
    assert cut.returncode is None
    assert says_over()
    for follower in cut_off:
        assert follower.closes[0] == 1012, follower.closes
    # It serves events again: one rendezvous hashing gives it is activated there.
    await event_owned_by(cut, servers, redis_server, group)


@FAULTS
async def test_an_owner_cut_off_from_mongodb_hands_its_events_over_and_serves_again_after(
    cluster: StartCluster, redis_server: RedisServer, tcp_proxy: StartProxy, mongodb_url: str,
    nursery: trio.Nursery, fault: str
) -> None:
    mongodb = urlsplit(mongodb_url)
    assert mongodb.hostname is not None
    assert mongodb.port is not None
    database = new_database_name()
    group = await cluster(2, redis=redis_server, DB_CONNECTION=mongodb_url, DB_NAME=database,
                          **UNLIMITED)
    proxy = await tcp_proxy(mongodb.port, mongodb.hostname)
    cut = await group.start_node(
        DB_CONNECTION=f"mongodb://{proxy.host}:{proxy.port}/?directConnection=true")
    async with diagnosed(group):
        await partition_under_load(
            group, redis_server, proxy, cut, nursery, fault,
            says_cut=lambda: len(logged(cut, STORE_LOST)) == 1,
            says_over=lambda: (len(logged(cut, STORE_LOST)) == 1
                               and len(logged(cut, STORE_BACK)) == 1))


STORE_LOST = ("store unreachable: this node hands its events over and serves none until the "
              "store answers again")
STORE_BACK = "store reachable again: this node serves events again"


@FAULTS
async def test_an_owner_cut_off_from_redis_hands_its_events_over_and_serves_again_after(
    cluster: StartCluster, redis_server: RedisServer, tcp_proxy: StartProxy,
    nursery: trio.Nursery, fault: str
) -> None:
    group = await cluster(2, redis=redis_server, **UNLIMITED)
    proxy = await tcp_proxy(redis_server.port)
    cut = await group.start_node(REDIS_URL=proxy.url())
    async with diagnosed(group):
        await partition_under_load(
            group, redis_server, proxy, cut, nursery, fault,
            says_cut=lambda: len(logged(cut, REDIS_LOST)) == 1,
            says_over=lambda: (len(logged(cut, REDIS_LOST)) == 1
                               and len(logged(cut, REDIS_BACK)) == 1))


REDIS_LOST = "Redis unreachable"
REDIS_BACK = "Redis unreachable: over"
