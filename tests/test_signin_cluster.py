"""Sign-in limits in a cluster: counted in Redis, so every node refuses what any node counted;
counted by each node alone, without hanging a login, while Redis does not answer."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.helpers.cluster_fixtures import WAIT_SECONDS, RedisServer, StartCluster, StartProxy
from tests.helpers.signin import LOGIN, Clock, add_users, client_from, codes, login
from vpiska.cluster import redis
from vpiska.cluster.signin_counters import REDIS_WAIT_SECONDS, RETRY_SECONDS, RedisCounters
from vpiska.signin_limits import WRONG_PASSWORD_WINDOW_SECONDS, LocalCounters

OUTAGE = "sign-in limits: Redis unreachable; this node counts alone"


async def test_every_node_refuses_what_the_others_counted(
        cluster: StartCluster, redis_server: RedisServer) -> None:
    group = await cluster(2, redis=redis_server, SIGNIN_RATE_PER_MINUTE="4")
    one, two = group.nodes
    await add_users(await group.server(one), "9001000001", "9001000002")

    # Per address: 4 a minute from 127.0.0.2, wherever they land.
    async with client_from(one.url, "127.0.0.2") as on_one, \
            client_from(two.url, "127.0.0.2") as on_two:
        for client in (on_one, on_two, on_one, on_two):
            assert await codes(client, LOGIN, login("9001000002")) == []
        assert await codes(on_one, LOGIN, login("9001000002")) == ["TooManyRequests"]
        assert await codes(on_two, LOGIN, login("9001000002")) == ["TooManyRequests"]

    # Per phone: 5 wrong passwords from two addresses over both nodes, then even the right
    # one is refused, on either node.
    async with client_from(one.url, "127.0.0.3") as first, \
            client_from(two.url, "127.0.0.4") as second:
        for client in (first, second, first, second, first):
            assert await codes(client, LOGIN, login("9001000001", "wrong1")) == \
                ["InvalidPassword"]
        assert await codes(second, LOGIN, login("9001000001")) == ["TooManyRequests"]
    async with client_from(one.url, "127.0.0.5") as third:
        assert await codes(third, LOGIN, login("9001000001")) == ["TooManyRequests"]
        assert await codes(third, LOGIN, login("9001000002")) == []

    # Redis holds only what still limits, each key with its TTL.
    keys = await redis_keys(redis_server)
    assert keys == ["vpiska:signin:address:127.0.0.2", "vpiska:signin:address:127.0.0.3",
                    "vpiska:signin:address:127.0.0.4", "vpiska:signin:address:127.0.0.5",
                    "vpiska:signin:phone:9001000001"]
    async with redis.connect(redis_server.url) as shared:
        for key in keys:
            ttl = await shared.pttl(key)
            assert 0 < ttl <= WRONG_PASSWORD_WINDOW_SECONDS * 1000, (key, ttl)
        assert await shared.zcard("vpiska:signin:phone:9001000001") == 5


async def test_a_node_whose_redis_is_silent_counts_alone_and_says_so_once(
        cluster: StartCluster, redis_server: RedisServer, tcp_proxy: StartProxy) -> None:
    proxy = await tcp_proxy(redis_server.port)
    group = await cluster(1, redis=redis_server, REDIS_URL=proxy.url(),
                          SIGNIN_RATE_PER_MINUTE="3")
    node = group.nodes[0]
    await add_users(await group.server(node), "9001000001")
    proxy.freeze()  # Redis takes the commands and never answers
    async with client_from(node.url, "127.0.0.2") as client:
        # Every login is answered (the first after at most REDIS_WAIT_SECONDS), and this
        # node's own count still limits the address.
        with trio.fail_after(10):
            for _ in range(3):
                assert await codes(client, LOGIN, login("9001000001")) == []
            assert await codes(client, LOGIN, login("9001000001")) == ["TooManyRequests"]
        await node.wait_for_line(lambda line: line["event"] == OUTAGE)
        assert [line["event"] for line in node.lines()].count(OUTAGE) == 1
    proxy.thaw()


async def test_counting_goes_back_to_redis_once_it_answers_again(
        redis_server: RedisServer, tcp_proxy: StartProxy,
        log_lines: list[dict[str, Any]]) -> None:
    """A command cut short by the wait bound leaves no stray answer behind: once Redis answers
    again the counts are Redis' own, and the outage's end is logged with what it cost."""
    proxy = await tcp_proxy(redis_server.port)
    clock = Clock()
    async with redis.connect(proxy.url()) as client:
        counters = RedisCounters(client, LocalCounters(clock), clock)
        assert await counters.take_attempt("10.0.0.1", 2) == 0
        proxy.freeze()
        with trio.fail_after(REDIS_WAIT_SECONDS + 5):
            assert await counters.take_attempt("10.0.0.1", 2) == 0  # counted here alone
            assert await counters.take_attempt("10.0.0.1", 2) == 0
            assert await counters.take_attempt("10.0.0.1", 2) == 30  # not asked: 5 s alone
        proxy.thaw()
        clock.now += RETRY_SECONDS
        with trio.fail_after(WAIT_SECONDS):
            # The command cut short reached Redis once the path thawed, and counted there
            # (a refusal the node's count did not need): the address has had its 2 in Redis.
            # The answer is this command's own, not the late one's (0).
            assert await counters.take_attempt("10.0.0.1", 2) == pytest.approx(30, abs=1)
            assert await counters.claim_guess("9001000001", "c1") == 0
    assert await redis_keys(redis_server) == ["vpiska:signin:address:10.0.0.1",
                                              "vpiska:signin:phone:9001000001"]
    outage = [line for line in log_lines if line["event"].startswith(OUTAGE)]
    assert [line["event"] for line in outage] == [OUTAGE, f"{OUTAGE}: over"]
    assert outage[1]["failures"] == 1


async def redis_keys(redis_server: RedisServer) -> list[str]:
    async with redis.connect(redis_server.url) as client:
        return sorted(key.decode() for key in await client.keys("vpiska:signin:*"))
