"""Nodes as machines of their own (tests/helpers/cluster_fixtures.py's `machines`): each node has a
DATA_DIR of its own and no folder in common with another; they share MongoDB and Redis, and
nothing else, as nodes on different hosts do. What a client did through one machine must be
served through every other, by the survivors of a machine SIGKILLed, and by a fresh machine
(an empty DATA_DIR) at once; a rolling restart onto fresh machines drops nobody.

Media bytes live in MongoDB (GridFS, `MEDIA_STORE`'s default beside it), so any machine serves
any download.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio

from tests.helpers.clients import Crowd, Member, host_event, token_for
from tests.helpers.cluster_fixtures import Cluster, Node, RedisServer, StartCluster
from tests.helpers.cluster_state import TTL, UNLIMITED, diagnosed, eventually, owner_now, owner_of
from tests.helpers.followers import (
    kill_until_served_again,
    settle_and_check,
    start_followers,
    talking,
)
from tests.helpers.server import Server

PASSWORD = "secret1"
_phones = itertools.count(9200000000)


async def servers(group: Cluster) -> list[Server]:
    return [await group.server(node) for node in group.nodes]


async def sign_up(server: Server, name: str) -> dict[str, Any]:
    """A user signed up through `server`'s HTTP (the login response, and its `phone`)."""
    phone = str(next(_phones))
    return {**await server.sign_up(name, phone, PASSWORD), "phone": phone}


async def log_in(server: Server, user: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await server.ok(
        "/api/v1/users/login", {"phone": user["phone"], "password": PASSWORD})
    return result


def around(x: float, y: float) -> dict[str, Any]:
    return {"coordinates": {"x": x, "y": y}, "horizontalRange": 1, "verticalRange": 1}


async def on_the_map(server: Server, x: float, y: float, expected: list[str]) -> None:
    """`server`'s map shows exactly the events `expected` around (x, y): another machine
    learns of a create or a move by a notice, so this may be a notice away."""
    async def shown() -> bool:
        found = await server.ok("/api/v1/events/range", around(x, y))
        return [event["id"] for event in found] == expected

    await eventually(shown, 15)


async def test_accounts_and_events_made_through_one_machine_are_served_through_every_other(
    machines: StartCluster, redis_server: RedisServer
) -> None:
    group = await machines(3, redis=redis_server)
    a, b, c = await servers(group)
    ann = await sign_up(a, "ann")
    on_b = await log_in(b, ann)
    assert on_b["id"] == ann["id"]
    renamed = await c.ok("/api/v1/users/update", {"name": "anna"}, token=on_b["accessToken"])
    token = renamed["accessToken"]
    event = await b.ok("/api/v1/events/create", {
        "name": "party", "address": "street 1", "coordinates": {"x": 10, "y": 20}}, token=token)
    event_id = event["id"]
    for server in (a, b, c):
        shown = await server.ok("/api/v1/events/get", {"eventId": event_id})
        assert (shown["name"], shown["ownerId"]) == ("party", ann["id"])
        await on_the_map(server, 10, 20, [event_id])
    await c.ok("/api/v1/events/update", {
        "eventId": event_id, "address": "moved", "coordinates": {"x": 30, "y": 40}}, token=token)
    for server in (a, b, c):
        assert (await server.ok("/api/v1/events/get", {"eventId": event_id}))["address"] == "moved"
        await on_the_map(server, 30, 40, [event_id])
        await on_the_map(server, 10, 20, [])
    again = await log_in(a, ann)
    assert (again["name"], again["eventId"]) == ("anna", event_id)
    await a.ok("/api/v1/events/close", {"eventId": event_id}, token=token)
    for server in (a, b, c):
        assert await server.codes("/api/v1/events/get", {"eventId": event_id}) == [
            "EventNotFound"]
        await on_the_map(server, 30, 40, [])
    assert (await log_in(c, ann))["eventId"] is None


async def test_one_room_across_machines_chats_both_ways_in_one_order(
    machines: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    group = await machines(2, redis=redis_server, **UNLIMITED)
    a, b = await servers(group)
    token, event_id = await host_event(a)
    crowd_a, crowd_b = Crowd(nursery, a), Crowd(nursery, b)
    members: list[Member] = []
    for i in range(3):
        members.append(await crowd_a.join((await token_for(a, f"a{i}"))[1], event_id))
        members.append(await crowd_b.join((await token_for(b, f"b{i}"))[1], event_id))
    for member in members:
        await member.wait_for(lambda m: m.counts()[-1:] == [6])
    async with trio.open_nursery() as talk:  # members of both machines at once
        for i, member in enumerate(members):
            for k in range(5):
                talk.start_soon(member.say, f"m{i}-{k}")
    for member in members:
        await member.wait_for(lambda m: len(m.chat()) == 30)
    orders = [[f for f in member.frames if f.startswith("chatMessage/")] for member in members]
    assert all(order == orders[0] for order in orders)
    assert sorted(members[0].chat()) == sorted(f"m{i}-{k}" for i in range(6) for k in range(5))
    await b.ok("/api/v1/events/update", {
        "eventId": event_id, "address": "moved", "coordinates": {"x": 1, "y": 2}}, token=token)
    for member in members:
        await member.wait_for(lambda m: any('"address":"moved"' in f for f in m.frames))
    for server in (a, b):
        shown = await server.ok("/api/v1/events/get", {"eventId": event_id})
        assert [line["message"] for line in shown["chatMessages"]] == members[0].chat()
        assert shown["usersCount"] == 6
    await crowd_a.aclose()
    await crowd_b.aclose()


async def test_a_machine_killed_under_chat_load_leaves_all_it_took_in_to_the_others(
    machines: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """The owner of a busy room is SIGKILLed: the room goes on through the others, with
    nothing anyone saw lost, and the account and the event signed up and opened through the
    killed machine are served by the others."""
    group = await machines(3, redis=redis_server, **UNLIMITED)
    async with diagnosed(group):
        every = await servers(group)
        _, event_id = await host_event(every[0])
        owner = await owner_now(redis_server, event_id, group)
        victim = group.nodes.index(owner)
        bob = await sign_up(every[victim], "bob")
        bobs = await every[victim].ok("/api/v1/events/create", {
            "name": "bob's", "address": "b", "coordinates": {"x": 70, "y": 80}},
            token=bob["accessToken"])
        alive = [True] * 3
        followers = await start_followers(nursery, every, event_id, 2, alive)
        async with talking(followers, every, alive) as sent:
            for follower in followers:
                await follower.wait_for(20)
            await kill_until_served_again(owner, victim, followers, alive, sent)
            for follower in followers:
                await follower.wait_for(len(follower.lines) + 5)
        stored = await settle_and_check(followers, every, event_id)
        assert set(sent) >= set(stored)
        assert await owner.wait() == -9
        new_owner = await owner_of(redis_server, event_id, group)
        assert new_owner is not None
        assert new_owner is not owner
        for server in (s for i, s in enumerate(every) if i != victim):
            shown = await server.ok("/api/v1/events/get", {"eventId": event_id})
            assert [line["message"] for line in shown["chatMessages"]] == stored
            on_it = await log_in(server, bob)
            assert (on_it["id"], on_it["eventId"]) == (bob["id"], bobs["id"])
            assert (await server.ok("/api/v1/events/get", {"eventId": bobs["id"]}))[
                "name"] == "bob's"
            await on_the_map(server, 70, 80, [bobs["id"]])


async def test_a_fresh_machine_serves_accounts_events_and_the_room_at_once(
    machines: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """A machine that never saw any of it (an empty DATA_DIR) answers its first requests
    with everything the others took in: no warm-up, no retry."""
    group = await machines(2, redis=redis_server, **UNLIMITED)
    a, b = await servers(group)
    ann = await sign_up(a, "ann")
    token = ann["accessToken"]
    event_id = (await b.ok("/api/v1/events/create", {
        "name": "party", "address": "a", "coordinates": {"x": 55, "y": 66}}, token=token))["id"]
    crowds = [Crowd(nursery, a), Crowd(nursery, b)]
    on_a = await crowds[0].join((await token_for(a))[1], event_id)
    on_b = await crowds[1].join((await token_for(b))[1], event_id)
    await on_a.say("from a")
    await on_b.wait_for(lambda m: m.chat() == ["from a"])
    await on_b.say("from b")
    await on_a.wait_for(lambda m: m.chat() == ["from a", "from b"])

    machine = await group.start_node()
    fresh = await group.server(machine)
    login = await log_in(fresh, ann)
    assert (login["id"], login["eventId"]) == (ann["id"], event_id)
    shown = await fresh.ok("/api/v1/events/get", {"eventId": event_id})
    assert [line["message"] for line in shown["chatMessages"]] == ["from a", "from b"]
    assert shown["usersCount"] == 2
    near = await fresh.ok("/api/v1/events/range", around(55, 66))
    assert [event["id"] for event in near] == [event_id]
    crowds.append(Crowd(nursery, fresh))
    late = await crowds[2].join(login["accessToken"], event_id, since=0)
    await late.wait_for(lambda m: m.chat() == ["from a", "from b"])  # caught up on the fresh one
    await late.say("from the fresh one")
    for member in (on_a, on_b, late):
        await member.wait_for(lambda m: m.chat()[-1:] == ["from the fresh one"])
    assert (await fresh.ok("/api/v1/events/get", {"eventId": event_id}))["usersCount"] == 3
    for crowd in crowds:
        await crowd.aclose()


async def download(server: Server, media_id: str) -> tuple[int, bytes, str | None]:
    response = await server.http.get(f"/api/v1/media/{media_id}")
    return response.status_code, response.content, response.headers.get("content-type")


async def test_media_taken_in_by_a_machine_is_served_by_the_others_and_outlives_it(
    machines: StartCluster, redis_server: RedisServer
) -> None:
    """A file, an event's media and a user's image, each uploaded through machine A, download
    whole through B; after A is SIGKILLed, through B and through a fresh machine at once;
    a delete through one machine is a delete on all."""
    group = await machines(2, redis=redis_server, LEASE_TTL_SECONDS=str(TTL))
    uploader, other = await servers(group)
    photo = bytes(range(256)) * 1200  # 300 KiB: more than one chunk of GridFS (255 KiB)
    clip, image = b"\x00clip" * 1000, b"\x89PNG image"
    media_id = await uploader.ok("/api/v1/media",
                                 files={"file": ("photo.jpg", photo, "image/jpeg")})
    token, event_id = await host_event(uploader)
    await uploader.ok("/api/v1/events/media/add", token=token, data={"eventId": event_id},
                      files={"media": ("clip.mp4", clip, "video/mp4")})
    avatar = await uploader.ok("/api/v1/users/media/set", token=token,
                               files={"image": ("me.png", image, "image/png")})
    (attached,) = (await other.ok("/api/v1/events/get", {"eventId": event_id}))["media"]
    expected = {media_id: (200, photo, "image/jpeg"), attached["id"]: (200, clip, "video/mp4"),
                avatar["imageId"]: (200, image, "image/png")}
    assert {media: await download(other, media) for media in expected} == expected

    killed: Node = group.nodes[0]
    killed.sigkill()
    assert await killed.wait() == -9
    fresh = await group.server(await group.start_node())
    for server in (other, fresh):
        assert {media: await download(server, media) for media in expected} == expected
        described = (await server.http.get(f"/api/v1/media/metadata/{media_id}")).json()
        assert (described["result"]["name"], described["result"]["size"]) == (
            "photo.jpg", len(photo))
    shown = await fresh.ok("/api/v1/events/get", {"eventId": event_id})
    assert shown["media"] == [attached]

    deleted = await fresh.http.delete(f"/api/v1/media/{media_id}")
    assert deleted.json()["isSuccess"] is True, deleted.text
    for server in (other, fresh):
        assert (await download(server, media_id))[0] == 404


async def test_a_rolling_restart_onto_a_fresh_machine_drops_no_socket_elsewhere(
    machines: StartCluster, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """The event's owner gets SIGTERM while every member talks, and a fresh machine takes its
    place: the event moves; only the leaving machine's sockets are closed, and their members
    rejoin elsewhere; nobody else is disconnected, and every line they said is kept.

    The leaving machine's sockets are told 1012, but on a loaded machine some are dropped
    (1006) instead: its room, on MongoDB, can be some hundred lines behind when the node
    leaves, and the process exits before their writers have sent the frames queued before the
    close. They miss nothing for it (`settle_and_check`)."""
    group = await machines(3, redis=redis_server, **UNLIMITED)
    async with diagnosed(group):
        every = await servers(group)
        _, event_id = await host_event(every[0])
        alive = [True] * 3
        followers = await start_followers(nursery, every, event_id, 2, alive)
        owner = await owner_now(redis_server, event_id, group)
        leaving = group.nodes.index(owner)
        async with talking(followers, every, alive) as sent:
            for follower in followers:
                await follower.wait_for(20)
            staying = [f for f in followers if f.node != leaving]
            alive[leaving] = False
            owner.sigterm()
            code = await owner.wait()
            assert code == 0, [line.get("traceback", line["event"]) for line in owner.lines()
                               if line["level"] != "info"]
            every[leaving] = await group.server(await group.start_node())
            alive[leaving] = True
            for follower in followers:
                await follower.wait_for(len(follower.lines) + 20)
        stored = set(await settle_and_check(followers, every, event_id))
        for follower in followers:
            if follower in staying:  # never disconnected, and every line it said is there
                assert follower.closes == [], (follower.name, follower.closes)
                said = {line for line in sent if line.startswith(f"{follower.name}-")}
                assert said <= stored, sorted(said - stored)
            else:  # told to reconnect (or dropped: see below), then did
                assert follower.closes[0] in (1012, 1006), follower.closes
        assert any(line["event"] == "left the cluster" for line in owner.lines())
        new_owner = await owner_of(redis_server, event_id, group)
        assert new_owner is not None
        assert new_owner is not owner
