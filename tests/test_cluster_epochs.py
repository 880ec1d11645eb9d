"""Redis forgets: the epochs it hands out are checked by the store, which is their authority.

A Redis restarted without its data, or a replica promoted before it had the last writes, has
counters behind the epochs it handed out: it hands one out again. What must hold for the
members (the `Follower`s of tests/helpers/followers.py): no line stored twice, every member
sees one order, nothing any of them saw is lost, and every room chats again soon, without a
restart of any node. On sqlite and on MongoDB, the two stores a cluster runs on.
"""

from __future__ import annotations

import collections
import contextlib

import coredis
import pytest
import trio

from tests.helpers.clients import host_event
from tests.helpers.cluster_fixtures import RedisServer, StartCluster
from tests.helpers.cluster_state import TTL, UNLIMITED, diagnosed, eventually, node_id, owner_now
from tests.helpers.followers import (
    Follower,
    followed_room,
    settle_and_check,
    start_followers,
    talking,
)
from tests.helpers.mongodb_fixtures import new_database_name
from vpiska.cluster import redis


@pytest.fixture(params=["sqlite", "mongodb"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The nodes' store: the cluster's sqlite file, or a fresh database of the session's
    MongoDB."""
    if request.param == "sqlite":
        return {}
    url: str = request.getfixturevalue("mongodb_url")
    return {"DB_CONNECTION": url, "DB_NAME": new_database_name()}


async def lease_of(redis_server: RedisServer, event_id: str) -> tuple[str, int] | None:
    """(node id, epoch) of the event's lease now; None if nobody holds it."""
    async with coredis.Redis.from_url(redis_server.url) as client:
        value = await client.get(redis.lease_key(event_id))
    if value is None:
        return None
    node, _, epoch = value.decode().partition(" ")
    return node, int(epoch)


async def test_an_epoch_redis_hands_out_twice_is_claimed_by_one_node(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery,
    store_env: dict[str, str]
) -> None:
    """What a failover that lost the last writes does: the owner's lease is gone and the
    event's epoch counter is one back, so the next acquisition gets the owner's epoch again.
    The owner is paused meanwhile (so that another node is the one to get it) and wakes up
    believing it owns the event. The store refuses the other node's claim of that epoch; that
    node takes the next one, and only then is the old owner fenced."""
    group = await cluster(3, redis=redis_server, **UNLIMITED, **store_env)
    async with diagnosed(group):
        servers, event_id, alive, followers, owner = await followed_room(
            nursery, group, redis_server)
        paused = group.nodes.index(owner)
        async with talking(followers, servers, alive):
            for follower in followers:
                await follower.wait_for(20)
            alive[paused] = False  # rejoining goes elsewhere
            await owner.sigstop()
            held = await lease_of(redis_server, event_id)
            assert held is not None
            epoch = held[1]
            async with coredis.Redis.from_url(redis_server.url) as client:
                await client.delete([redis.lease_key(event_id)])
                await client.set(redis.epoch_key(event_id), str(epoch - 1))

            async def taken_above() -> bool:  # refused at `epoch`, a node went above it
                lease = await lease_of(redis_server, event_id)
                return lease is not None and lease[1] > epoch

            await eventually(taken_above, TTL + 15)
            refused = [line for node in group.nodes for line in node.lines()
                       if line["event"].startswith("epoch counter behind the store")]
            assert refused, [line["event"] for line in owner.lines()]
            assert refused[0]["epoch"] == epoch
            assert f"was claimed already, by node {node_id(owner)}/" in refused[0]["cause"]
            lease = await lease_of(redis_server, event_id)
            assert lease is not None
            assert lease[0] != node_id(owner)  # the sleeper cannot have taken it
            awake = [f for f in followers if f.home != paused]
            for follower in awake:  # the room goes on without the sleeper
                await follower.wait_for(len(follower.lines) + 20)
            await owner.sigcont()
            alive[paused] = True
            for follower in followers:  # the sleeper's are told to reconnect, and do
                await follower.wait_for(len(follower.lines) + 20)
        await settle_and_check(followers, servers, event_id)
        fenced = [line for line in owner.lines() if "fenced" in line["event"]]
        assert fenced, [line["event"] for line in owner.lines()]


async def test_redis_restarted_empty_every_room_chats_again_within_the_lease_ttl(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery,
    store_env: dict[str, str]
) -> None:
    """How `make cluster` and compose run Redis: without persistence. Restarted, it has no
    lease, no node and epoch counters back at 0, below every epoch the store holds."""
    group = await cluster(3, redis=redis_server, **UNLIMITED, **store_env)
    async with diagnosed(group):
        servers = [await group.server(node) for node in group.nodes]
        event_ids = [(await host_event(server, x=index))[1]
                     for index, server in enumerate(servers)]
        alive = [True] * 3
        rooms: dict[str, list[Follower]] = {}
        for event_id in event_ids:
            rooms[event_id] = await start_followers(nursery, servers, event_id, 1, alive)
            await owner_now(redis_server, event_id, group)
        followers = [follower for room in rooms.values() for follower in room]
        pids = [node.pid for node in group.nodes]
        async with contextlib.AsyncExitStack() as talk:
            sent = collections.ChainMap[str, float]()  # when each line was said, every room
            for room in rooms.values():  # each room's talk ends with its own last lines
                sent.maps.append(await talk.enter_async_context(talking(room, servers, alive)))
            for follower in followers:
                await follower.wait_for(20)
            await redis_server.restart()
            back_at = trio.current_time()
            chatting_at: dict[str, float] = {}

            async def chats_again(room: list[Follower]) -> None:
                """A line said after the restart, seen by every member of the room."""
                with trio.fail_after(TTL + 15):
                    while True:
                        new = [{line for line in f.lines if sent.get(line, -1.0) > back_at}
                               for f in room]
                        if set.intersection(*new):
                            chatting_at[room[0].event_id] = trio.current_time()
                            return
                        await room[0].wait_for(len(room[0].lines) + 1)

            async with trio.open_nursery() as waiting:
                for room in rooms.values():
                    waiting.start_soon(chats_again, room)
            for follower in followers:
                await follower.wait_for(len(follower.lines) + 20)
        for event_id, room in rooms.items():
            await settle_and_check(room, servers, event_id)
        assert [node.pid for node in group.nodes] == pids
        assert all(node.returncode is None for node in group.nodes)
        slowest = max(chatting_at.values()) - back_at
        assert slowest < TTL + 2, chatting_at
