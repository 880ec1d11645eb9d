"""A cluster of nodes behaves as one server: members and requests spread over nodes see exactly
what they would see on one (real processes, a real Redis, one sqlite file)."""

from __future__ import annotations

import json
from typing import Any

import trio

from tests.cluster_fixtures import Cluster, RedisServer, StartCluster
from tests.clients import Crowd, Member, host_event, token_for
from tests.conftest import Server

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
        found = await server.ok("/api/v1/events/range", {
            "coordinates": {"x": 10, "y": 20}, "horizontalRange": 1, "verticalRange": 1})
        assert [(e["id"], e["usersCount"]) for e in found] == [(event_id, 2)]
    _, other = await token_for(b)
    assert await b.codes("/api/v1/events/update", {
        "eventId": event_id, "address": "x", "coordinates": {"x": 1, "y": 1}},
        token=other) == ["UserIsNotOwner"]
    await b.ok("/api/v1/events/update", {
        "eventId": event_id, "address": "moved", "coordinates": {"x": 30, "y": 40}}, token=token)
    for guest in (guest_a, guest_b):
        await guest.wait_for(lambda m: any('"address":"moved"' in f for f in m.frames))
    for server in (a, b):
        await _wait_for_range(server, 30, 40, event_id)
    await b.ok("/api/v1/events/close", {"eventId": event_id}, token=token)
    for guest in (guest_a, guest_b):
        assert await guest.wait_closed() == 1000
        assert guest.frames[-1] == "closeEvent/"
    for server in (a, b):
        assert await server.codes("/api/v1/events/get", {"eventId": event_id}) == [
            "EventNotFound"]
    await crowd_a.aclose()
    await crowd_b.aclose()


async def _wait_for_range(server: Server, x: float, y: float, event_id: str) -> None:
    """The moved event shows at its new place on `server`'s map (a notice away)."""
    body: dict[str, Any] = {"coordinates": {"x": x, "y": y}, "horizontalRange": 1,
                            "verticalRange": 1}
    with trio.fail_after(15):
        while [e["id"] for e in await server.ok("/api/v1/events/range", body)] != [event_id]:
            await trio.sleep(0.02)


def _counts(frames: list[str]) -> list[int]:
    return [json.loads(f[13:])["usersCount"] for f in frames if f.startswith("eventUpdated/")]

