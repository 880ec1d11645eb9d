"""Presence in the room without sockets (vpiska/actors/presence.py): what v2 members are shown
of who is here, on trio's virtual clock, through EventSupervisor, Room and EventActor."""

from __future__ import annotations

import json
import random

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from tests.helpers.fakes import RecordingOutbox
from tests.helpers.presence_view import PresenceView, is_presence
from tests.helpers.rooms import INTERVAL, Rooms, person, start_rooms
from vpiska.actors import Member, Room
from vpiska.actors.commands import Join, Joined, Members
from vpiska.domain import Identity


@pytest.fixture
async def rooms(nursery: trio.Nursery) -> Rooms:
    return await start_rooms(nursery)


async def enter(room: Room, who: Identity, version: int = 2) -> tuple[Member, RecordingOutbox]:
    outbox = RecordingOutbox(capacity=100_000)
    member = Member(who, outbox, version=version)
    joined = await room.ask(lambda reply: Join(member, reply))
    assert isinstance(joined, Joined)
    return member, outbox


async def leave(room: Room, member: Member) -> None:
    room.leave(member)
    await trio.testing.wait_all_tasks_blocked()


def presence_frames(outbox: RecordingOutbox) -> list[str]:
    return [frame for frame in outbox.take() if is_presence(frame)]


def user_text(who: Identity) -> str:
    return (f'{{"userId":"{who.user_id}","userName":"{who.name}",'
            f'"userImageId":"{who.image_id}"}}')


def listed(frame: str) -> list[str]:
    prefix, _, payload = frame.partition("/")
    assert prefix == "presence", frame
    return [user["userId"] for user in json.loads(payload)["users"]]


async def test_a_v2_member_is_listed_with_everyone_present_itself_included(
    rooms: Rooms, autojump_clock: MockClock
) -> None:
    _, room = await rooms.open()
    ann, bob = person("ann"), Identity(person().user_id, "bob", "image-of-bob")
    _, ann_out = await enter(room, ann, version=1)
    _, bob_out = await enter(room, bob)
    frames = presence_frames(bob_out)
    assert frames == [f'presence/{{"users":[{user_text(ann)},{user_text(bob)}]}}']
    assert presence_frames(ann_out) == []


async def test_changes_within_an_interval_are_one_announcement_that_adds_up(
    rooms: Rooms, autojump_clock: MockClock
) -> None:
    _, room = await rooms.open()
    stays, goes, comes_back, passes = person("stays"), person("goes"), person("back"), person()
    _, watcher_out = await enter(room, stays)
    view = PresenceView()
    view.apply_all(watcher_out.take())
    going, _ = await enter(room, goes, version=1)
    back, _ = await enter(room, comes_back, version=1)
    await trio.sleep(INTERVAL * 1.5)  # half way between two announcements
    view.apply_all(watcher_out.take())
    assert view.present == {stays.user_id, goes.user_id, comes_back.user_id}
    # Within one interval: one leaves, one leaves and comes back, one comes and goes, one comes.
    await leave(room, going)
    await leave(room, back)
    await enter(room, comes_back, version=1)
    passing, _ = await enter(room, passes, version=1)
    await leave(room, passing)
    new = person("new")
    await enter(room, new, version=1)
    await trio.sleep(INTERVAL)
    frames = presence_frames(watcher_out)
    assert frames == [f'membersLeft/["{goes.user_id}"]',
                      f"membersJoined/[{user_text(new)}]"]
    view.apply_all(frames)
    assert view.present == set(room.members)


async def test_a_user_with_several_sockets_is_present_once_until_the_last_leaves(
    rooms: Rooms, autojump_clock: MockClock
) -> None:
    _, room = await rooms.open()
    watcher, phone = person("watcher"), person("two devices")
    _, watcher_out = await enter(room, watcher)
    first, _ = await enter(room, phone, version=1)
    _, second_out = await enter(room, phone)
    await trio.sleep(INTERVAL * 1.5)
    assert listed(presence_frames(second_out)[0]) == [watcher.user_id, phone.user_id]
    assert presence_frames(watcher_out)[-1].startswith("membersJoined/")
    await leave(room, first)
    await trio.sleep(INTERVAL * 1.5)
    assert presence_frames(watcher_out) == []  # its other socket is still here
    body = await room.ask(Members)
    assert body == [watcher, phone]


async def test_a_room_of_v1_sockets_does_no_presence_work(
    rooms: Rooms, autojump_clock: MockClock
) -> None:
    _, room = await rooms.open()
    members = [await enter(room, person(), version=1) for _ in range(5)]
    for member, _ in members[:2]:
        await leave(room, member)
    await trio.sleep(INTERVAL * 2)
    assert not room.presence.pending
    assert room.presence.changes() == []  # nothing was even gathered
    assert all(presence_frames(outbox) == [] for _, outbox in members)


async def test_a_joiner_in_a_busy_room_gets_its_list_at_the_next_announcement(
    rooms: Rooms, autojump_clock: MockClock
) -> None:
    """Not before: the list then is what the changes to the others add up to, itself
    included, and it is not sent those changes."""
    _, room = await rooms.open()
    _, first_out = await enter(room, person("first"))
    presence_frames(first_out)  # its list: the announcement is due again in an interval
    late = person("late")
    _, late_out = await enter(room, late)
    await trio.sleep(INTERVAL / 2)
    assert presence_frames(late_out) == []
    await trio.sleep(INTERVAL)
    frames = presence_frames(late_out)
    assert len(frames) == 1
    assert late.user_id in listed(frames[0])
    assert presence_frames(first_out) == [f"membersJoined/[{user_text(late)}]"]


@pytest.mark.parametrize("seed", range(8))
async def test_members_applying_the_frames_in_order_end_with_exactly_the_present_set(
    rooms: Rooms, autojump_clock: MockClock, seed: int
) -> None:
    """Random joins, second devices and leaves of v1 and v2 sockets at random moments; every
    v2 socket checks each frame as it applies it (PresenceView), and once the room is quiet
    every one of them shows exactly who is there."""
    chance = random.Random(seed)
    _, room = await rooms.open()
    users = [person(f"u{i}") for i in range(12)]
    here: list[tuple[Member, RecordingOutbox]] = []
    views: dict[Member, PresenceView] = {}
    for _ in range(300):
        roll = chance.random()
        if roll < 0.45 or not here:
            member, outbox = await enter(room, chance.choice(users), chance.choice((1, 2)))
            here.append((member, outbox))
            if member.version == 2:
                views[member] = PresenceView()
        elif roll < 0.8:
            member, outbox = here.pop(chance.randrange(len(here)))
            views.pop(member, None)
            await leave(room, member)
        else:
            await trio.sleep(chance.uniform(0, INTERVAL * 1.5))
        for member, outbox in here:
            if member in views:
                views[member].apply_all(outbox.take())
    await trio.sleep(INTERVAL * 2)
    assert views, "no v2 socket stayed to the end"
    for member, outbox in here:
        if member in views:
            views[member].apply_all(outbox.take())
            assert views[member].present == set(room.members)
            assert member.identity.user_id in views[member].present


async def test_presence_frames_of_a_join_storm_are_bounded_per_interval(
    rooms: Rooms, autojump_clock: MockClock
) -> None:
    """1,000 sockets, half of them v2, arrive over two seconds and leave over two more: each
    member gets its list and at most one change of each kind per announcement, not a frame
    per join."""
    _, room = await rooms.open()
    started = trio.current_time()
    here: list[tuple[Member, RecordingOutbox]] = []
    for i in range(1000):
        here.append(await enter(room, person(f"u{i}"), version=1 + i % 2))
        await trio.sleep(0.002)
    for member, _ in here[:500]:
        await leave(room, member)
        await trio.sleep(0.004)
    await trio.sleep(INTERVAL * 2)
    storm = trio.current_time() - started
    announcements = storm / INTERVAL + 2
    for _, outbox in here[501::2]:  # the v2 sockets that stayed
        frames = presence_frames(outbox)
        assert len(frames) <= 1 + 2 * announcements, (len(frames), storm)
        view = PresenceView()
        view.apply_all(frames)
        assert view.present == set(room.members)
