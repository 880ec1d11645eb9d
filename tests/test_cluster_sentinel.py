"""A cluster on a Redis with Sentinels: REDIS_URL=redis+sentinel://…, and a failover under chat.

The primary is killed while members chat; the Sentinels promote the replica, which may lack the
last writes (leases, epoch counters: replication is asynchronous). What must hold is what holds
when Redis is lost for a while (tests/test_cluster_faults.py): every node stays up, says what
happened once, answers /readyz 503 while it cannot work, and serves again once the Sentinels
have a new primary, without a restart; no line any member saw is lost, none is stored twice,
every member sees one order.
"""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from tests.helpers.clients import host_event
from tests.helpers.cluster_fixtures import StartCluster
from tests.helpers.cluster_state import (
    TTL,
    UNLIMITED,
    all_ready,
    diagnosed,
    eventually,
    owner_now,
    ready,
)
from tests.helpers.followers import settle_and_check, start_followers, stored_chat, talking
from tests.helpers.sentinel_fixtures import SERVICE, Sentinels
from tests.helpers.server import Server
from vpiska.config import Config, ConfigError, RedisSentinel, sentinel_of


def test_redis_url_names_sentinels_or_one_redis() -> None:
    assert sentinel_of("redis+sentinel://a:26379,b:26380/main") == RedisSentinel(
        (("a", 26379), ("b", 26380)), "main")
    assert sentinel_of("redis+sentinel://user:secret@[::1]:26379/main/2") == RedisSentinel(
        (("::1", 26379),), "main", 2, "user", "secret")
    assert sentinel_of("redis+sentinel://:secret@h:1/main") == RedisSentinel(
        (("h", 1),), "main", 0, None, "secret")
    for one_redis in ("redis://h:6379/0", "rediss://h:6380", "unix:///run/redis.sock"):
        assert sentinel_of(one_redis) is None
        assert Config.from_env({"REDIS_URL": one_redis}).redis_url == one_redis


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://h:26379", "no service name"),
    ("redis+sentinel://h:26379/", "no service name"),
    ("redis+sentinel://h/main", "'h' is not host:port"),
    ("redis+sentinel://h:x/main", "'h:x' is not host:port"),
    ("redis+sentinel://h:1,/main", "'' is not host:port"),
    ("redis+sentinel://h:1/main/zero", "'zero' is not a database number"),
    ("sentinel://h:1/main", "not a redis://, rediss://, unix:// or redis+sentinel:// URL"),
])
def test_a_malformed_redis_url_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_URL") as refused:
        Config.from_env({"REDIS_URL": url})
    assert says in str(refused.value)


async def test_the_sentinels_fail_over_to_the_replica(redis_sentinels: Sentinels) -> None:
    """The fixture itself: the Sentinels name the primary, then the replica once it is dead."""
    first = redis_sentinels.primary.port
    assert await redis_sentinels.primary_port() == {first}
    promoted = await redis_sentinels.fail_over()
    assert promoted.port != first
    assert await redis_sentinels.primary_port() == {promoted.port}
    assert SERVICE in redis_sentinels.url


async def test_a_failover_under_chat_load_loses_nothing_and_needs_no_restart(
    cluster: StartCluster, redis_sentinels: Sentinels, nursery: trio.Nursery
) -> None:
    group = await cluster(3, redis=None, REDIS_URL=redis_sentinels.url, **UNLIMITED)
    async with diagnosed(group):
        servers = [await group.server(node) for node in group.nodes]
        _, event_id = await host_event(servers[0])
        alive = [True] * 3
        followers = await start_followers(nursery, servers, event_id, 2, alive)
        await owner_now(redis_sentinels.primary, event_id, group)
        pids = [node.pid for node in group.nodes]
        async with talking(followers, servers, alive) as sent:
            for follower in followers:
                await follower.wait_for(20)
            before = len(await stored_chat(servers[0], event_id))
            not_ready: set[int] = set()

            async def watch_readiness(index: int, server: Server) -> None:
                while index not in not_ready:
                    if await ready(server) == 503:
                        not_ready.add(index)
                    await trio.sleep(0.05)  # how often a probe asks, not a wait for anything

            async with trio.open_nursery() as watching:
                for index, server in enumerate(servers):
                    watching.start_soon(watch_readiness, index, server)
                promoted = await redis_sentinels.fail_over()

                async def all_unready() -> bool:  # each node said so while it could not work
                    await trio.lowlevel.checkpoint()
                    return len(not_ready) == len(servers)

                await eventually(all_unready, TTL + 15)
            healed_at = trio.current_time()
            await all_ready(servers)
            for follower in followers:  # the room is served again, for everyone
                await follower.wait_for(len(follower.lines) + 20)
            resumed = trio.current_time() - healed_at
        stored = await settle_and_check(followers, servers, event_id)
        assert len(stored) > before
        assert set(sent) >= set(stored)
        assert [node.pid for node in group.nodes] == pids
        assert all(node.returncode is None for node in group.nodes)
        for node in group.nodes:  # what happened, said once, in plain words
            events = [line["event"] for line in node.lines()]
            assert events.count("Redis unreachable") == 1, events
            assert events.count("Redis unreachable: over") == 1, events
            moved = [line for line in node.lines()
                     if line["event"] == "Redis failed over: following the new primary"]
            assert len(moved) == 1, events
            assert moved[0]["primary"].endswith(f":{promoted.port}")
        assert resumed < TTL + 15
