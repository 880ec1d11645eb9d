"""Many members, many rooms, storms and slow phones: what the actor design promises under load."""

from __future__ import annotations

import gc
import itertools
import json
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import trio

from tests.helpers.clients import Crowd, Member, host_event, token_for
from tests.helpers.raw_ws import RawMember, RawSocket, resource
from tests.helpers.server import BOTH_WRITE_PATHS, Server, port_of
from vpiska.actors.member import Member as RoomMember
from vpiska.actors.room import Room

pytestmark = BOTH_WRITE_PATHS

T = TypeVar("T")

UNLIMITED_CHAT = {"chat_rate_per_second": 1e6, "chat_burst": 10**6}
# The storms here, 100 handshakes in flight, measure the rooms, not admission
# (tests/test_admission.py): no bound on the handshakes in progress.
UNBOUNDED_HANDSHAKES = {"max_pending_handshakes": 0}
LINE_DEADLINE = 15  # s: longest a line may take to reach a reader that keeps up


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return UNBOUNDED_HANDSHAKES


async def join_all(crowd: Crowd, tokens: list[str], event_id: str, in_flight: int = 100
                   ) -> list[Member]:
    members: list[Member | None] = [None] * len(tokens)
    limit = trio.CapacityLimiter(in_flight)

    async def one(i: int) -> None:
        async with limit:
            members[i] = await crowd.join(tokens[i], event_id)

    async with trio.open_nursery() as nursery:
        for i in range(len(tokens)):
            nursery.start_soon(one, i)
    return [m for m in members if m is not None]


async def settle(members: list[Member], count: int) -> None:
    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(member.wait_for, lambda m: m.counts()[-1:] == [count], 60)


async def test_three_hundred_members_see_every_line_once_in_one_order(
    server: Server, crowd: Crowd
) -> None:
    _, event_id = await host_event(server)
    tokens = [(await token_for(server))[1] for _ in range(300)]
    members = await join_all(crowd, tokens, event_id)
    await settle(members, 300)
    marks = [len(m.frames) for m in members]
    async with trio.open_nursery() as nursery:
        for i, member in enumerate(members[:30]):
            for k in range(3):
                nursery.start_soon(member.say, f"m{i}-{k}")
    await settle_chat(members, 90)
    tails = [m.frames[mark:] for m, mark in zip(members, marks, strict=True)]
    # A late joiner may have had 300 in its own join's frame before the room's coalesced
    # announcement of it, which then comes after the mark: the same state, nothing new.
    assert all(f.startswith("chatMessage/") or count_of(f) == 300 for t in tails for f in t)
    heard = [[f for f in tail if f.startswith("chatMessage/")] for tail in tails]
    assert all(lines == heard[0] for lines in heard)  # one order for everyone
    lines = [json.loads(f.split("/", 1)[1])["message"] for f in heard[0]]
    assert sorted(lines) == sorted(f"m{i}-{k}" for i in range(30) for k in range(3))
    stored = await server.ok("/api/v1/events/get", {"eventId": event_id})
    assert [c["message"] for c in stored["chatMessages"]] == lines


def count_of(frame: str) -> int | None:
    """usersCount of an eventUpdated frame; None for any other frame."""
    if not frame.startswith("eventUpdated/"):
        return None
    return int(json.loads(frame[13:])["usersCount"])


async def settle_chat(members: list[Member], lines: int) -> None:
    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(member.wait_for, lambda m: len(m.chat()) >= lines, 60)


async def test_fifty_rooms_of_ten_do_not_leak_into_each_other(
    server: Server, crowd: Crowd
) -> None:
    rooms: list[tuple[str, list[Member]]] = []
    for r in range(50):
        _, owner = await token_for(server)
        event = await server.ok("/api/v1/events/create", {
            "name": f"room{r}", "address": "a", "coordinates": {"x": r, "y": r}}, token=owner)
        rooms.append((event["id"], await join_all(
            crowd, [(await token_for(server))[1] for _ in range(10)], event["id"])))
    for _, members in rooms:
        await settle(members, 10)
    async with trio.open_nursery() as nursery:
        for r, (_, members) in enumerate(rooms):
            for i, member in enumerate(members):
                for k in range(2):
                    nursery.start_soon(member.say, f"r{r}-m{i}-{k}")
    for r, (_, members) in enumerate(rooms):
        await settle_chat(members, 20)
        chats = [m.chat() for m in members]
        assert all(chat == chats[0] for chat in chats)
        assert sorted(chats[0]) == sorted(f"r{r}-m{i}-{k}" for i in range(10) for k in range(2))


@pytest.mark.parametrize("config_overrides", [{"ws_ping_seconds": 600, **UNBOUNDED_HANDSHAKES}],
                         ids=["no-pings"])
async def test_join_storm_costs_a_bounded_number_of_count_frames(
    server: Server, nursery: trio.Nursery
) -> None:
    _, event_id = await host_event(server)
    members: list[RawMember] = []
    limit = trio.CapacityLimiter(100)

    async def arrive() -> None:
        async with limit:
            raw = await RawSocket.connect(port_of(server),
                                          resource(server, (await token_for(server))[1], event_id))
            member = RawMember(raw)
            members.append(member)
            nursery.start_soon(member.collect)

    started = trio.current_time()
    async with trio.open_nursery() as arrivals:
        for _ in range(1000):
            arrivals.start_soon(arrive)
    async with trio.open_nursery() as waiting:
        for member in members:
            waiting.start_soon(member.wait_for_count, 1000)
    storm = trio.current_time() - started
    try:
        interval = server.config.event_update_interval_ms / 1000
        per_member = [len(m.counts()) for m in members]
        # At most one count frame per interval, plus one at each edge; announcing every
        # join to everyone would average ~500 frames per member.
        assert max(per_member) <= storm / interval + 2, (max(per_member), storm)
        assert sum(per_member) / len(per_member) < storm / interval + 2
    finally:
        for member in members:
            await member.raw.stream.aclose()


@pytest.mark.parametrize("config_overrides", [UNLIMITED_CHAT], ids=["no-limit"])
async def test_close_under_load_ends_everything(
    server: Server, crowd: Crowd, nursery: trio.Nursery
) -> None:
    owner, event_id = await host_event(server)
    users = [await token_for(server) for _ in range(20)]
    members = await join_all(crowd, [token for _, token in users], event_id)
    await settle(members, 20)
    # What the server holds of this event, found while it is live (so the check below looks
    # at these and at nothing another test left behind), held weakly.
    ours = {user_id for user_id, _ in users}
    held = (referents(RoomMember, lambda m: m.identity.user_id in ours)
            + referents(Room, lambda r: r.event_id == event_id))
    assert len(held) == 20 + 1

    async def chatter(member: Member, i: int) -> None:
        """A lively room, not a flood: each member keeps one line in flight, saying the next
        once the room has sent it the last."""
        for k in itertools.count():
            line, heard = f"m{i}-{k}", len(member.chat())
            try:
                await member.say(line)
            except Exception:  # the socket closed under us: that is the point
                return

            def back_or_closed(m: Member, line: str = line, heard: int = heard) -> bool:
                return m.closed.is_set() or line in m.chat()[heard:]

            await member.wait_for(back_or_closed)
            if member.closed.is_set():
                return

    for i, member in enumerate(members):
        nursery.start_soon(chatter, member, i)
    await settle_chat(members, 60)
    await server.ok("/api/v1/events/close", {"eventId": event_id}, token=owner)
    for member in members:
        assert await member.wait_closed() == 1000
        assert member.frames[-1] == "closeEvent/"
    assert await server.codes("/api/v1/events/get", {"eventId": event_id}) == ["EventNotFound"]
    # Server-side sessions finish and drop their members. Nothing is sent after a session lets
    # go of its member, so there is no frame to wait for: the condition is polled, with a
    # deadline.
    with trio.fail_after(30):
        while any(ref() is not None for ref in held) or room_tasks(event_id):
            await trio.sleep(0.05)  # how often to look (and collect), not a wait for anything
            gc.collect()


def referents(kind: type[T], where: Callable[[T], bool]) -> list[weakref.ref[T]]:
    """Weak references to the live objects of `kind` for which `where` holds."""
    gc.collect()
    return [weakref.ref(o) for o in gc.get_objects() if isinstance(o, kind) and where(o)]


def room_tasks(event_id: str) -> list[str]:
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        if event_id in task.name:
            names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None  # inside trio.run
    walk(root)
    return names


@pytest.mark.parametrize(
    "config_overrides",
    # Pings off the table: the stuck socket must be dropped as slow, not as silent.
    [{**UNLIMITED_CHAT, "member_outbox_frames": 16, "ws_ping_seconds": 600}],
    ids=["outbox-16"])
async def test_slow_consumer_is_dropped_and_does_not_delay_the_room(
    server: Server, crowd: Crowd
) -> None:
    _, event_id = await host_event(server)
    _, talker_token = await token_for(server)
    _, good_token = await token_for(server)
    _, slow_token = await token_for(server)
    talker = await crowd.join(talker_token, event_id)
    good = await crowd.join(good_token, event_id)
    slow = await RawSocket.connect(port_of(server), resource(server, slow_token, event_id),
                                   receive_buffer=4096)
    async with slow.stream:
        await good.wait_for(lambda m: m.counts()[-1:] == [3])
        sent = 0
        for i in range(5000):  # up to ~7.5 MB: far more than the slow socket's buffers hold
            if good.counts()[-1] == 2:  # the slow one was dropped
                break
            # Stay a few lines ahead of the good reader: it keeps up, the slow one cannot. The
            # good reader getting each line while the slow one reads nothing is the room going
            # on without the stuck phone; how late a line may be is a generous deadline, not a
            # latency a loaded machine can break.
            def caught_up(m: Member, i: int = i) -> bool:
                return len(m.chat()) >= i - 8

            await good.wait_for(caught_up, timeout=LINE_DEADLINE)
            await talker.say(f"{i:05d}" + "x" * 1500)
            sent += 1
        else:
            raise AssertionError("the slow consumer was never dropped")
        await good.wait_for(lambda m: len(m.chat()) == sent)
        with trio.fail_after(30):  # once it reads again it learns why
            texts, code = await slow.texts_until_close()
        assert code == 4008
    slow_chat = [json.loads(t.split("/", 1)[1])["message"] for t in texts
                 if t.startswith("chatMessage/")]
    assert good.chat()[:len(slow_chat)] == slow_chat  # what it got, it got in order
    # A full outbox of lines (and the rest) went to the others and never to the stuck phone:
    # the room dropped them for it rather than wait for it to read.
    assert len(good.chat()) - len(slow_chat) >= server.config.member_outbox_frames
