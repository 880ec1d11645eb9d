"""A cluster of nodes behaves as one server: members and requests spread over nodes see exactly
what they would see on one (real processes, a real Redis, one sqlite file)."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import coredis
import httpx
import trio

from tests.helpers.clients import Crowd, Member, connected_sockets, host_event, token_for
from tests.helpers.cluster_fixtures import Cluster, RedisServer, StartCluster
from tests.helpers.cluster_state import eventually, owner_now
from tests.helpers.process import ServerProcess, env, vpiska_process
from tests.helpers.raw_ws import RawSocket, resource
from tests.helpers.server import Server, port_of
from vpiska.config import Config
from vpiska.domain import new_id
from vpiska.store.sqlite import SqliteStore

JWT_KEY = "the cluster tests' key, long enough for HS256"

UNLIMITED = {"CHAT_RATE_PER_SECOND": "1000000", "CHAT_BURST": "1000000"}


async def servers(group: Cluster) -> list[Server]:
    return [await group.server(node) for node in group.nodes]


def chat_frames(member: Member) -> list[str]:
    return [f for f in member.frames if f.startswith("chatMessage/")]


async def test_members_on_every_node_see_the_same_frames_in_one_order(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    group = await cluster(2, redis=redis_server, **UNLIMITED)
    a, b = await servers(group)
    _, event_id = await host_event(a)
    crowd_a, crowd_b = Crowd(nursery, a), Crowd(nursery, b)
    members = []
    for i in range(3):
        members.append(await crowd_a.join((await token_for(a, f"a{i}"))[1], event_id))
        members.append(await crowd_b.join((await token_for(b, f"b{i}"))[1], event_id))
    for member in members:
        await member.wait_for(lambda m: m.counts()[-1:] == [6])
    for server in (a, b):  # each node counts the sockets it serves, not the others'
        assert await connected_sockets(server) == 3
    async with trio.open_nursery() as talk:
        for i, member in enumerate(members):
            for k in range(5):
                talk.start_soon(member.say, f"m{i}-{k}")
    for member in members:
        await member.wait_for(lambda m: len(m.chat()) == 30)
    orders = [chat_frames(member) for member in members]
    assert all(order == orders[0] for order in orders)
    assert sorted(members[0].chat()) == sorted(f"m{i}-{k}" for i in range(6) for k in range(5))
    for server in (a, b):
        event = await server.ok("/api/v1/events/get", {"eventId": event_id})
        assert [c["message"] for c in event["chatMessages"]] == members[0].chat()
        assert event["usersCount"] == 6
    await crowd_a.aclose()
    await crowd_b.aclose()


async def test_many_requests_at_once_each_get_their_own_events_answer(
    cluster: StartCluster, redis_server: RedisServer
) -> None:
    """Requests to one node that cross at once travel in shared messages (rpc.py): each
    still gets the answer of its own event, from whichever node runs it."""
    group = await cluster(2, redis=redis_server)
    a, b = await servers(group)
    events = [(await host_event((a, b)[i % 2], name=f"party {i}", x=i, y=i))[1]
              for i in range(12)]  # a node runs the events opened through it
    answers: dict[tuple[int, str], Any] = {}

    async def get(server: Server, event_id: str, round_number: int) -> None:
        answers[round_number, event_id] = await server.ok("/api/v1/events/get",
                                                           {"eventId": event_id})

    async with trio.open_nursery() as asking:
        for round_number in range(3):
            for server in (a, b):
                for event_id in events:
                    asking.start_soon(get, server, event_id, round_number)
    for i, event_id in enumerate(events):
        for round_number in range(3):
            event = answers[round_number, event_id]
            assert (event["id"], event["name"]) == (event_id, f"party {i}")
    async with coredis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        leases = [await client.get(f"vpiska:lease:{event_id}") for event_id in events]
    assert len({str(lease).split(" ")[0] for lease in leases}) == 2, leases  # some crossed


async def test_requests_on_any_node_reach_the_event_wherever_it_runs(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    group = await cluster(2, redis=redis_server)
    a, b = await servers(group)
    token, event_id = await host_event(a, x=10, y=20)
    crowd_a, crowd_b = Crowd(nursery, a), Crowd(nursery, b)
    guest_a = await crowd_a.join((await token_for(a))[1], event_id)
    guest_b = await crowd_b.join((await token_for(b))[1], event_id)
    for guest in (guest_a, guest_b):
        await guest.wait_for(lambda m: m.counts()[-1:] == [2])
    for server in (a, b):  # the map is the cluster's, with the cluster's count
        await _wait_for_range(server, 10, 20, [(event_id, 2)])
    _, other = await token_for(b)
    assert await b.codes("/api/v1/events/update", {
        "eventId": event_id, "address": "x", "coordinates": {"x": 1, "y": 1}},
        token=other) == ["UserIsNotOwner"]
    await b.ok("/api/v1/events/update", {
        "eventId": event_id, "address": "moved", "coordinates": {"x": 30, "y": 40}}, token=token)
    for guest in (guest_a, guest_b):
        await guest.wait_for(lambda m: any('"address":"moved"' in f for f in m.frames))
    for server in (a, b):
        await _wait_for_range(server, 30, 40, [(event_id, 2)])
    await b.ok("/api/v1/events/close", {"eventId": event_id}, token=token)
    for guest in (guest_a, guest_b):
        assert await guest.wait_closed() == 1000
        assert guest.frames[-1] == "closeEvent/"
    for server in (a, b):
        assert await server.codes("/api/v1/events/get", {"eventId": event_id}) == [
            "EventNotFound"]
    await crowd_a.aclose()
    await crowd_b.aclose()


async def test_reads_at_once_on_any_node_see_every_line_echoed_before_they_were_asked(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """A node that does not own the event shares one owner read among the requests waiting
    for it; each must still see every line its client could have seen before asking."""
    group = await cluster(2, redis=redis_server, **UNLIMITED)
    a, b = await servers(group)
    _, event_id = await host_event(a)
    crowd = Crowd(nursery, a)
    talker = await crowd.join((await token_for(a))[1], event_id)
    lines = [f"l{k}" for k in range(30)]
    reads = [0]

    async def reader(server: Server, done: trio.Event) -> None:
        while not done.is_set():
            echoed = len(talker.chat())  # before asking: the answer must hold these
            event = await server.ok("/api/v1/events/get", {"eventId": event_id})
            shown = [c["message"] for c in event["chatMessages"]]
            assert shown == lines[: len(shown)]
            assert len(shown) >= echoed, (server, echoed, len(shown))
            reads[0] += 1

    done = trio.Event()
    async with trio.open_nursery() as readers:
        for server in (a, b):
            for _ in range(8):
                readers.start_soon(reader, server, done)
        for count, line in enumerate(lines, start=1):
            await talker.say(line)
            await talker.wait_for(partial(_has_chat, count))
        done.set()
    assert reads[0] >= 16
    await crowd.aclose()


async def test_a_node_reads_an_event_owned_elsewhere_without_waiting_on_its_owner(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """`events/get` on a node that does not own the event is answered from the view its
    owner keeps in Redis: while the owner sleeps (SIGSTOP, its lease still good) the answer
    is the event as the owner last showed it, to the last line echoed and the last join.
    Asking the owner instead, the request would wait out the reply deadline and fail."""
    group = await cluster(2, redis=redis_server, LEASE_TTL_SECONDS="600", **UNLIMITED)
    token, event_id = await host_event(await group.server(group.nodes[0]))
    owner = await owner_now(redis_server, event_id, group)
    other = next(node for node in group.nodes if node is not owner)
    on_owner, elsewhere = await group.server(owner), await group.server(other)
    crowd_owner, crowd_other = Crowd(nursery, on_owner), Crowd(nursery, elsewhere)
    talker = await crowd_owner.join((await token_for(on_owner))[1], event_id)
    await crowd_other.join((await token_for(elsewhere))[1], event_id)
    await elsewhere.ok("/api/v1/events/update", {
        "eventId": event_id, "address": "moved", "coordinates": {"x": 3, "y": 4}}, token=token)
    for count, line in enumerate(["one", "two", "three"], start=1):
        await talker.say(line)
        await talker.wait_for(partial(_has_chat, count))
    expected = await on_owner.ok("/api/v1/events/get", {"eventId": event_id})
    await owner.sigstop()
    try:
        with trio.fail_after(5):  # well inside the reply deadline (10 s)
            shown = await elsewhere.ok("/api/v1/events/get", {"eventId": event_id})
    finally:
        await owner.sigcont()
    assert shown == expected
    assert shown["usersCount"] == 2
    assert shown["address"] == "moved"
    assert [c["message"] for c in shown["chatMessages"]] == ["one", "two", "three"]
    await crowd_owner.aclose()
    await crowd_other.aclose()


async def test_a_chat_longer_than_the_owner_holds_is_read_whole_on_any_node(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """An owner keeps at most CHAT_MEMORY_LINES lines in memory and in its view; past that,
    every node reads the chat from the store, and the answer is the same everywhere."""
    group = await cluster(2, redis=redis_server, CHAT_MEMORY_LINES="2", **UNLIMITED)
    a, b = await servers(group)
    _, event_id = await host_event(a)
    crowd = Crowd(nursery, a)
    talker = await crowd.join((await token_for(a))[1], event_id)
    lines = [f"line {k}" for k in range(5)]
    for count, line in enumerate(lines, start=1):
        await talker.say(line)
        await talker.wait_for(partial(_has_chat, count))
        for server in (a, b):
            event = await server.ok("/api/v1/events/get", {"eventId": event_id})
            assert [c["message"] for c in event["chatMessages"]] == lines[:count]
    await crowd.aclose()


async def test_a_join_storm_before_anyone_owns_the_event_looks_the_owner_up_once(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """After a restart nobody owns an event until it is used, and every client of it
    reconnects at once: their handshakes share one lookup of the owner (and the activation
    it leads to), not one Redis read each. 600 reads at once in the bench slowed Redis'
    answers past their deadline, and the handshakes waiting on them were refused."""
    group = await cluster(1, redis=redis_server)
    first = await group.server(group.nodes[0])
    _, event_id = await host_event(first)
    tokens = [(await token_for(first, f"g{i}"))[1] for i in range(30)]
    group.nodes[0].sigterm()  # hands the event back: open in the store, owned by nobody
    assert await group.nodes[0].wait() == 0
    server = await group.server(await group.start_node())
    crowd = Crowd(nursery, server)
    async with coredis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        assert await client.get(f"vpiska:lease:{event_id}") is None
        async with monitor(redis_server) as commands:
            async with trio.open_nursery() as joins:
                for token in tokens:
                    joins.start_soon(crowd.join, token, event_id)
            await client.echo("the storm is over")
            sent = await commands('"the storm is over"')
    lookups = [line for line in sent if f'"get" "vpiska:lease:{event_id}"' in line.lower()]
    assert 1 <= len(lookups) <= 5, lookups
    await crowd.aclose()


@asynccontextmanager
async def monitor(redis_server: RedisServer) -> AsyncIterator[
        Callable[[str], Awaitable[list[str]]]]:
    """Redis' MONITOR while the block runs: `commands(marker)` returns the commands clients
    sent (not their scripts' own) up to the first that shows `marker`, which a client sends
    after the commands the test counts (MONITOR shows commands in the order Redis ran them)."""
    stream = await trio.open_tcp_stream(redis_server.host, redis_server.port)
    async with stream:
        await stream.send_all(b"MONITOR\r\n")
        received = bytearray()

        async def commands(marker: str) -> list[str]:
            with trio.fail_after(15):
                while marker.encode() not in received:
                    data = await stream.receive_some()
                    assert data, "Redis closed the MONITOR connection"
                    received.extend(data)
            lines = received.decode().split("\r\n")
            until = next(i for i, line in enumerate(lines) if marker in line)
            return [line for line in lines[:until] if "[0 lua]" not in line]

        yield commands


async def _wait_for_range(server: Server, x: float, y: float,
                          expected: list[tuple[str, int]]) -> None:
    """`server`'s map shows `expected` (event id, usersCount) around (x, y): a node learns
    another's moves and counts by notices, so this is a notice away."""
    body: dict[str, Any] = {"coordinates": {"x": x, "y": y}, "horizontalRange": 1,
                            "verticalRange": 1}

    async def shown() -> bool:
        return [(e["id"], e["usersCount"])
                for e in await server.ok("/api/v1/events/range", body)] == expected

    await eventually(shown, 15)


def _has_chat(count: int, member: Member) -> bool:
    return len(member.chat()) == count


def _counts(frames: list[str]) -> list[int]:
    return [json.loads(f[13:])["usersCount"] for f in frames if f.startswith("eventUpdated/")]



async def test_workers_run_several_nodes_on_one_port(
    tmp_path: Path, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    async with vpiska_process(tmp_path, WORKERS="2", REDIS_URL=redis_server.url,
                              JWT_KEY=JWT_KEY) as served:
        with trio.fail_after(30):
            await served.wait_for_output(lambda served: len(serving_lines(served)) == 2)
        lines = serving_lines(served)
        assert {line["binds"][0] for line in lines} == {served.url}
        assert len({line["cluster_node"] for line in lines}) == 2
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            store = await SqliteStore.open(tmp_path / "data" / "vpiska.db")
            try:
                server = Server(served.url, Config.from_env({"JWT_KEY": JWT_KEY}), http, store)
                _, event_id = await host_event(server)
                crowd = Crowd(nursery, server)
                members = [await crowd.join((await token_for(server))[1], event_id)
                           for _ in range(6)]  # the kernel spreads them over both nodes
                await members[0].say("hello")
                for member in members:
                    await member.wait_for(lambda m: m.chat() == ["hello"])
                await crowd.aclose()
            finally:
                await store.aclose()
        served.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await served.exit_code() == 0
        assert served.text().count('"left the cluster"') == 2


def serving_lines(served: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in served.text().splitlines()
            if '"event": "serving"' in line]


async def test_workers_without_redis_is_refused_with_one_line(tmp_path: Path) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "vpiska"], env=env(tmp_path, WORKERS="2"),
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "WORKERS" in lines[0]
    assert "REDIS_URL" in lines[0]


async def test_one_user_on_two_nodes_counts_once_and_handshakes_are_checked_everywhere(
    cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    group = await cluster(2, redis=redis_server)
    a, b = await servers(group)
    token, event_id = await host_event(a)
    _, ann = await token_for(a, "ann")
    _, bob = await token_for(a, "bob")
    crowd_a, crowd_b = Crowd(nursery, a), Crowd(nursery, b)
    phone = await crowd_a.join(ann, event_id)
    tablet = await crowd_b.join(ann, event_id)  # the same user, on the other node
    watcher = await crowd_b.join(bob, event_id)
    await watcher.wait_for(lambda m: m.counts()[-1:] == [2])
    for server in (a, b):
        event = await server.ok("/api/v1/events/get", {"eventId": event_id})
        assert event["usersCount"] == 2
        for query, status in ((resource(server, None, event_id), 401),
                              (resource(server, ann, "not-an-id"), 400),
                              (resource(server, ann, new_id()), 404),
                              (resource(server, ann, event_id) + "&since=x", 400)):
            assert await RawSocket.handshake_status(port_of(server), query) == status
    photo = {"media": ("p.jpg", b"jpeg", "image/jpeg")}
    await b.ok("/api/v1/events/media/add", token=token, files=photo, data={"eventId": event_id})
    media = (await a.ok("/api/v1/events/get", {"eventId": event_id}))["media"]
    for member in (phone, tablet, watcher):
        await member.wait_for(
            lambda m: f'mediaAdded/{{"id":"{media[0]["id"]}","contentType":"image/jpeg"}}'
            in m.frames)
    await phone.say("before the late one")
    late = await crowd_b.join((await token_for(b, "late"))[1], event_id, since=0)
    await late.wait_for(lambda m: m.chat() == ["before the late one"])  # caught up on b
    await crowd_a.aclose()
    await crowd_b.aclose()
