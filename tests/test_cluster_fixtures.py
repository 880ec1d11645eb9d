"""The cluster tests' own machinery (tests/helpers/cluster_fixtures.py), proven on what exists
today: plain nodes (REDIS_URL unset) sharing one data dir, nodes as machines with nothing on disk in
common, a Redis of the test's own that can be killed and restarted, and the TCP proxy in front
of that Redis."""

from __future__ import annotations

from pathlib import Path

import coredis
import pytest
import trio

from tests.helpers.clients import token_for
from tests.helpers.cluster_fixtures import (
    WAIT_SECONDS,
    Cluster,
    NodeDidNotStart,
    RedisServer,
    StartCluster,
    StartProxy,
    redis_ping,
    redis_server_executable,
)
from vpiska.config import Config


async def healthz(cluster: Cluster, index: int) -> tuple[int, object]:
    server = await cluster.server(cluster.nodes[index])
    response = await server.http.get("/healthz")
    return response.status_code, response.json()


async def test_plain_nodes_share_one_data_dir_and_each_serves(
    cluster: StartCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://a-developers-redis:6379")  # must not leak in
    group = await cluster(2, redis=None)
    a, b = group.nodes
    assert a.port != b.port
    for index, node in enumerate(group.nodes):
        assert "REDIS_URL" not in node.env
        assert node.env["DATA_DIR"] == str(group.data_dir)
        assert await healthz(group, index) == (
            200, {"isSuccess": True, "errors": None, "result": {"status": "alive"}})
        serving = next(line for line in node.lines() if line["event"] == "serving")
        assert serving["binds"] == [node.url]
        assert serving["store"] == "sqlite"
    assert (group.data_dir / "vpiska.db").exists()

    # One user table and one key: a user put in the shared store opens an event on either node.
    for node in (a, b):
        server = await group.server(node)
        _, token = await token_for(server)
        event = await server.ok("/api/v1/events/create", {
            "name": "party", "address": "a", "coordinates": {"x": 1, "y": 2}}, token=token)
        assert event["name"] == "party"


async def test_sigterm_stops_a_node_with_exit_0_and_every_line_is_json(
    cluster: StartCluster,
) -> None:
    group = await cluster(1, redis=None)
    (node,) = group.nodes
    node.sigterm()
    assert await node.wait() == 0
    assert node.lines()[-1]["event"] == "stopped"
    assert node.stderr == ""


async def test_a_stopped_node_holds_requests_until_continued_and_sigkill_ends_it(
    cluster: StartCluster,
) -> None:
    group = await cluster(1, redis=None)
    (node,) = group.nodes
    server = await group.server(node)
    await node.sigstop()
    assert node.stopped
    async with trio.open_nursery() as nursery:
        answered = trio.Event()

        async def ask() -> None:
            assert (await server.http.get("/healthz")).status_code == 200
            answered.set()

        nursery.start_soon(ask)
        await node.sigcont()  # the request, sent to a frozen node, is answered once it goes on
        with trio.fail_after(WAIT_SECONDS):
            await answered.wait()
    mark = len(node.lines())
    node.sigkill()
    assert await node.wait() == -9
    assert node.lines()[mark:] == []  # no goodbye from a killed process


async def test_a_node_that_cannot_start_raises_with_its_output(cluster: StartCluster) -> None:
    with pytest.raises(NodeDidNotStart, match="SERVER_PORT"):
        await cluster(1, redis=None, SERVER_PORT="five")


async def test_wait_for_line_sees_lines_to_come(cluster: StartCluster) -> None:
    group = await cluster(1, redis=None, LOGGING_TRACE_REQUESTS="true")
    (node,) = group.nodes
    mark = len(node.lines())
    server = await group.server(node)
    await server.http.get("/healthz", headers={"X-Request-Id": "look-for-me"})
    line = await node.wait_for_line(lambda line: line.get("request_id") == "look-for-me",
                                    since=mark)
    assert line["event"] == "http request"


async def test_cluster_nodes_share_one_redis(
    cluster: StartCluster, redis_server: RedisServer
) -> None:
    group = await cluster(2, redis=redis_server)
    assert [node.env["REDIS_URL"] for node in group.nodes] == [redis_server.url] * 2
    third = await group.start_node(REDIS_URL=None)  # one without, for a mixed set-up
    assert "REDIS_URL" not in third.env
    assert {node.env["DATA_DIR"] for node in group.nodes} == {str(group.data_dir)}


async def test_machines_share_mongodb_and_redis_and_no_folder(
    machines: StartCluster, redis_server: RedisServer, mongodb_url: str
) -> None:
    group = await machines(2, redis=redis_server)
    fresh = await group.start_node()
    assert group.machines
    disks = [node.data_dir for node in group.nodes]
    assert disks == [group.data_dir / node.name for node in group.nodes]
    for disk in disks:  # no data dir holds another's
        assert not any(other != disk and other.is_relative_to(disk) for other in disks)
    assert not [path for path in fresh.data_dir.rglob("*") if path.is_file()]  # fresh
    database = group.nodes[0].env["DB_NAME"]
    for node in group.nodes:
        assert node.env["DB_CONNECTION"] == mongodb_url
        assert node.env["DB_NAME"] == database
        assert node.env["REDIS_URL"] == redis_server.url
        serving = next(line for line in node.lines() if line["event"] == "serving")
        assert serving["store"] == "mongodb"
        assert Config.from_env(node.env).media_path.is_relative_to(node.data_dir)
    for machine in group.data_dir.iterdir():  # nothing of the store on any disk
        assert not list(machine.rglob("*.db")), machine
    assert database != (await machines(1, redis=None)).nodes[0].env["DB_NAME"]


async def test_redis_server_restarts_empty_on_the_same_port(redis_server: RedisServer) -> None:
    url = redis_server.url
    client: coredis.Redis[str] = coredis.Redis.from_url(url, decode_responses=True)
    async with client:  # the project's client, on trio
        await client.set("key", "before")
        assert await client.get("key") == "before"

    await redis_server.kill()
    assert not redis_server.running
    assert not await redis_server.ping()

    await redis_server.restart()
    assert redis_server.url == url
    assert await redis_server.ping()
    client = coredis.Redis.from_url(url, decode_responses=True)
    async with client:
        assert await client.get("key") is None  # nothing persisted
    await redis_server.restart()  # while running, too
    assert await redis_server.ping()


async def test_a_proxy_cuts_and_restores_the_path_to_redis(
    redis_server: RedisServer, tcp_proxy: StartProxy
) -> None:
    proxy = await tcp_proxy(redis_server.port)
    assert await redis_ping(proxy.host, proxy.port)
    proxy.cut()
    assert not await redis_ping(proxy.host, proxy.port)
    assert await redis_server.ping()  # only the path is cut
    proxy.restore()
    assert await redis_ping(proxy.host, proxy.port)


@pytest.mark.parametrize(("ci", "outcome"), [
    pytest.param("true", pytest.fail.Exception, id="ci-fails"),
    pytest.param("", pytest.skip.Exception, id="local-skips"),
])
def test_without_redis_server_ci_fails_and_a_developer_skips(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="redis-server is not installed"):
        redis_server_executable()
