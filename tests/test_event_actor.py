"""The live room without sockets: EventSupervisor, Room and EventActor on a MemoryStore.

Members are `Member(identity, RecordingOutbox())`; every test runs on trio's virtual clock
(`autojump_clock`), so a reply deadline of ten seconds or a restart window of five costs
nothing. Faults come from FaultyStore (tests/helpers/fakes.py) wrapped around the MemoryStore;
nothing is patched. Tests assert what the room's users observe: the frames their outboxes got, the
answers to their requests, close codes, and what the store holds.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, cast

import outcome
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from tests.helpers.fakes import FaultyStore, RecordingOutbox, TimedOutbox
from tests.helpers.rooms import (
    INTERVAL,
    Rooms,
    join,
    outbox,
    person,
    refusal,
    snapshot,
    start_rooms,
)
from vpiska import metrics
from vpiska.actors import CloseCode, EventSupervisor, EventView, Member, Room
from vpiska.actors.commands import (
    AddMedia,
    Chat,
    Close,
    Command,
    Join,
    Joined,
    RemoveMedia,
    Reply,
    Snapshot,
    Stop,
    Update,
)
from vpiska.actors.event import MAX_BATCH, EventActor, Exit
from vpiska.actors.geo import MapIndex
from vpiska.config import Config
from vpiska.domain import ChatMessage, Coordinates, Event, EventMedia, new_id, utc_now
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import MemoryStore, Store

REPLY_TIMEOUT = Config().actor_reply_timeout_seconds


@pytest.fixture
async def rooms(nursery: trio.Nursery) -> Rooms:
    return await start_rooms(nursery)


async def say(room: Room, member: Member, text: str) -> None:
    assert await room.send(Chat(member.identity, text))


def payloads(texts: Sequence[str], kind: str) -> list[Any]:
    return [json.loads(text.removeprefix(kind + "/")) for text in texts
            if text.startswith(kind + "/")]


def chat(member: Member) -> list[str]:
    return [line["message"] for line in payloads(outbox(member).frames, "chatMessage")]


def counts(member: Member) -> list[int]:
    return [update["usersCount"] for update in payloads(outbox(member).frames, "eventUpdated")]


def announcements(member: Member, since: float) -> list[tuple[float, int]]:
    """(seconds after `since`, usersCount) of each eventUpdated frame `member` got since then."""
    assert isinstance(member.outbox, TimedOutbox)
    return [(at - since, json.loads(text.removeprefix("eventUpdated/"))["usersCount"])
            for at, text in member.outbox.arrivals
            if at >= since and text.startswith("eventUpdated/")]


def slow_consumer_disconnects() -> float:
    """`vpiska_ws_disconnects_total{reason="slow_consumer"}` as a scrape would read it."""
    for family in metrics.WS_DISCONNECTS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels == {"reason": "slow_consumer"}:
                return sample.value
    return 0.0


def running_tasks() -> set[str]:
    """The names of every task alive in this trio run (trio's public introspection)."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    names, todo = set(), [root]
    while todo:
        task = todo.pop()
        names.add(task.name)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return names


# Group commit.


async def test_lines_queued_during_a_write_go_into_the_next_single_write(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    _, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    released = rooms.store.hang("append_chat")
    await say(room, ann, "0")
    await rooms.store.wait_calls("append_chat", 1)
    for n in range(1, 6):
        await say(room, bob if n % 2 else ann, str(n))
    await trio.testing.wait_all_tasks_blocked()
    assert rooms.store.count("append_chat") == 1  # the others wait for the write in flight
    released.set()
    await trio.testing.wait_all_tasks_blocked()
    batches = [[line.message for line in args[2]]
               for name, args in rooms.store.calls if name == "append_chat"]
    assert batches == [["0"], ["1", "2", "3", "4", "5"]]


async def test_every_member_sees_every_line_once_in_one_order(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    members = [await join(room, name) for name in ("ann", "bob", "cid")]
    released = rooms.store.hang("append_chat")
    await say(room, members[0], "0")
    await rooms.store.wait_calls("append_chat", 1)
    for n in range(1, 10):
        await say(room, members[n % 3], str(n))
    await trio.testing.wait_all_tasks_blocked()
    released.set()
    await trio.testing.wait_all_tasks_blocked()
    stored = await rooms.stored_chat(event.id)
    assert sorted(stored, key=int) == [str(n) for n in range(10)]
    for member in members:
        assert chat(member) == stored


async def test_a_line_is_sent_only_after_it_is_stored(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    released = rooms.store.hang("append_chat")
    await say(room, ann, "hi")
    await rooms.store.wait_calls("append_chat", 1)
    await trio.sleep(REPLY_TIMEOUT)  # however long the write takes
    assert (chat(ann), chat(bob), await rooms.stored_chat(event.id)) == ([], [], [])
    released.set()
    await trio.testing.wait_all_tasks_blocked()
    assert chat(ann) == chat(bob) == await rooms.stored_chat(event.id) == ["hi"]
    assert (await snapshot(room)).chat_length == 1


async def test_a_write_holds_at_most_max_chat_batch_lines(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join(room, "ann")
    released = rooms.store.hang("append_chat")
    await say(room, ann, "0")
    await rooms.store.wait_calls("append_chat", 1)
    for n in range(1, MAX_BATCH + 101):
        await say(room, ann, str(n))
    released.set()
    await trio.testing.wait_all_tasks_blocked()
    assert [len(args[2]) for name, args in rooms.store.calls if name == "append_chat"] == [
        1, MAX_BATCH, 100]
    assert chat(ann) == await rooms.stored_chat(event.id) == [
        str(n) for n in range(MAX_BATCH + 101)]


async def test_a_member_entering_unanswered_gets_the_state_then_its_own_lines(
    rooms: Rooms, autojump_clock: MockClock
) -> None:
    event, room = await rooms.open()
    ann = Member(person("ann"), RecordingOutbox())
    await room.enter(ann)  # returns with the Join only queued
    await say(room, ann, "right away")  # queued behind it
    await snapshot(room)  # the sentinel: both went through the actor before it
    assert [f.split("/", 1)[0] for f in outbox(ann).frames] == ["eventUpdated",
                                                                "chatMessage"]
    assert counts(ann) == [1]
    assert chat(ann) == ["right away"]
    await room.ask(lambda reply: Close(event.owner_id, reply))
    with pytest.raises(DomainError) as refused:
        await room.enter(Member(person("bob"), RecordingOutbox()))
    assert refused.value.codes == (ErrorCode.EVENT_NOT_FOUND,)


# Count coalescing.


async def test_joins_within_the_interval_are_announced_once(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    _, room = await rooms.open()
    first = await join(room, "ann", TimedOutbox())
    start = trio.current_time()
    assert counts(first) == [1]  # the first join is announced at once: nothing was pending
    await trio.sleep(INTERVAL / 5)
    for name in ("bob", "cid", "dan"):
        await join(room, name)
    await trio.sleep(INTERVAL * 4)
    assert announcements(first, start) == [(0, 1), (pytest.approx(INTERVAL), 4)]


async def test_a_joining_socket_gets_the_current_state_at_once(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    await join(room, "ann")
    before = trio.current_time()
    bobs = TimedOutbox()
    await join(room, "bob", bobs)
    [(at, text)] = bobs.arrivals  # within the interval of ann's join, yet at once
    assert at == before
    state = json.loads(text.removeprefix("eventUpdated/"))
    assert state == {"eventId": event.id, "name": "party", "address": "street 1",
                     "usersCount": 2, "coordinates": {"x": 1.0, "y": 2.0}}


async def test_a_second_device_of_a_user_changes_no_count(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    _, room = await rooms.open()
    ann = await join(room, "ann")
    bob = await join(room, "bob")
    await trio.sleep(INTERVAL * 2)
    assert counts(ann) == [1, 2]
    assert counts(bob) == [2, 2]
    second_device = await join(room, bob.identity)
    assert counts(second_device) == [2]  # its own state, at once
    await trio.sleep(INTERVAL * 4)
    assert counts(ann) == [1, 2]
    assert counts(bob) == [2, 2]
    assert (await snapshot(room)).users_count == 2
    room.leave(second_device)
    await trio.sleep(INTERVAL * 4)
    assert counts(ann) == [1, 2]  # bob is still there on his first device
    assert (await snapshot(room)).users_count == 2


async def test_a_change_after_a_quiet_interval_is_announced_at_once_the_rest_coalesced(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    _, room = await rooms.open()
    ann = await join(room, "ann", TimedOutbox())
    leaving = [await join(room, name) for name in ("bob", "cid", "dan")]
    await trio.sleep(INTERVAL * 2)
    quiet = trio.current_time()
    for member in leaving:
        room.leave(member)
    await trio.sleep(INTERVAL * 4)
    assert announcements(ann, quiet) == [(0, 3), (pytest.approx(INTERVAL), 1)]


async def test_a_large_room_hears_its_count_less_often(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    # 4 count frames a second: a room of 5 hears its count every 5 / 4 s, not every interval.
    rooms = await start_rooms(nursery, count_frames_per_second=4)
    _, room = await rooms.open()
    ann = await join(room, "ann", TimedOutbox())
    for name in ("bob", "cid", "dan"):
        await join(room, name)
    await trio.sleep(4.0)
    start = trio.current_time()
    late = [await join(room, name) for name in ("eve", "fay", "gus", "hal")]
    await trio.sleep(INTERVAL / 2)
    room.leave(late[0])
    await trio.sleep(4.0)
    # eve's join after a quiet spell at once (5 members), the rest 5 / 4 s later.
    assert announcements(ann, start) == [(0, 5), (pytest.approx(1.25), 7)]


# Slow consumers.


async def test_a_member_whose_outbox_is_full_is_dropped_with_4008(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    await trio.sleep(INTERVAL * 2)
    slow = await join(room, "slow", RecordingOutbox(capacity=1))  # full with its first frame
    disconnects = slow_consumer_disconnects()
    await say(room, ann, "one")
    await say(room, bob, "two")
    await trio.sleep(INTERVAL * 2)
    assert slow_consumer_disconnects() == disconnects + 1
    assert outbox(slow).close_code == CloseCode.SLOW_CONSUMER
    assert outbox(slow).aborted
    assert chat(slow) == []
    assert chat(ann) == chat(bob) == ["one", "two"] == await rooms.stored_chat(event.id)
    assert counts(ann)[-1] == 2  # the slow member has left the room
    assert (await snapshot(room)).users_count == 2


async def test_a_member_whose_connection_is_gone_is_removed_without_counting_as_slow(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    _, room = await rooms.open()
    ann, gone = await join(room, "ann"), await join(room, "gone")
    await trio.sleep(INTERVAL * 2)
    outbox(gone).gone = True  # the socket died; its Leave has not arrived yet
    disconnects = slow_consumer_disconnects()
    await say(room, ann, "hi")
    await trio.sleep(INTERVAL * 2)
    assert slow_consumer_disconnects() == disconnects
    assert outbox(gone).close_code is None
    assert not outbox(gone).aborted
    assert counts(ann)[-1] == 1
    assert (await snapshot(room)).users_count == 1
    room.leave(gone)  # the Leave that was on the way changes nothing more
    await trio.sleep(INTERVAL * 2)
    assert counts(ann)[-1] == 1
    assert (await snapshot(room)).users_count == 1


# Supervision: crash, restart, restart limit.


async def test_a_store_fault_in_a_chat_write_restarts_the_actor_with_its_members(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    rooms.crash_on("boom")
    await say(room, ann, "before")
    await trio.testing.wait_all_tasks_blocked()
    await say(room, ann, "boom")
    await trio.testing.wait_all_tasks_blocked()
    assert rooms.supervisor.restarts == 1
    await say(room, bob, "after")
    await trio.testing.wait_all_tasks_blocked()
    assert chat(ann) == chat(bob) == ["before", "after"] == await rooms.stored_chat(event.id)
    assert outbox(ann).close_code is None
    assert outbox(bob).close_code is None
    view = await snapshot(room)
    assert (view.users_count, view.chat_length) == (2, 2)
    cid = await join(room, "cid")  # the restarted room still admits people
    await trio.sleep(INTERVAL * 2)
    assert counts(ann)[-1] == 3
    assert counts(cid)[-1] == 3


async def test_a_count_change_pending_at_a_crash_is_still_announced(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    _, room = await rooms.open()
    ann = await join(room, "ann")
    await trio.sleep(INTERVAL / 5)
    bob = await join(room, "bob")  # within the interval: announced at its end
    rooms.crash_on("boom")
    await say(room, bob, "boom")  # the actor crashes before the interval ends
    await trio.sleep(INTERVAL * 4)
    assert rooms.supervisor.restarts == 1
    assert counts(ann) == [1, 2]


async def test_a_request_handled_at_a_crash_answers_internal_error_at_once(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join(room, "ann")
    rooms.store.fail("update_event")
    asked = trio.current_time()
    codes = await refusal(room, lambda reply: Update(
        event.owner_id, "street 2", Coordinates(3.0, 4.0), reply))
    assert codes == (ErrorCode.INTERNAL_ERROR,)
    assert trio.current_time() == asked  # not after the reply deadline
    assert rooms.supervisor.restarts == 1
    rooms.store.heal("update_event")
    await say(room, ann, "still here")
    await trio.testing.wait_all_tasks_blocked()
    assert chat(ann) == ["still here"]
    stored = await rooms.stored_event(event.id)
    assert stored.address == "street 1"


async def test_crashes_past_the_limit_within_the_window_fail_the_room(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    rooms.crash_on("boom")
    limit = rooms.config.actor_max_restarts
    spacing = rooms.config.actor_restart_window_seconds / (limit + 1)
    for _ in range(limit + 1):  # one crash more than the limit, all within the window
        await say(room, ann, "boom")
        await trio.sleep(spacing * 0.99)
    assert rooms.supervisor.restarts == limit
    for member in (ann, bob):
        assert outbox(member).close_code == CloseCode.INTERNAL_ERROR
        assert not outbox(member).aborted  # finished: what was queued still goes out
    assert await refusal(room, Snapshot) == (ErrorCode.INTERNAL_ERROR,)
    late = Member(person("late"), RecordingOutbox())
    assert await refusal(room, lambda reply: Join(late, reply)) == (ErrorCode.INTERNAL_ERROR,)
    stored = await rooms.stored_event(event.id)
    assert stored.is_open
    assert rooms.supervisor.in_range(-90, 90, -90, 90) == []


async def test_crashes_spread_over_more_than_the_window_do_not_fail_the_room(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join(room, "ann")
    rooms.crash_on("boom")
    limit = rooms.config.actor_max_restarts
    # Never more than `limit` crashes within one window.
    spacing = rooms.config.actor_restart_window_seconds / max(limit - 1, 1) * 1.01
    for _ in range(limit * 3):
        await say(room, ann, "boom")
        await trio.sleep(spacing)
    assert rooms.supervisor.restarts == limit * 3
    assert outbox(ann).close_code is None
    await say(room, ann, "alive")
    await trio.testing.wait_all_tasks_blocked()
    assert chat(ann) == ["alive"] == await rooms.stored_chat(event.id)


# A command the actor read ahead, gathering a chat batch, is the next one it handles: also
# when the batch's write crashes it, the restarted actor handles that command first.


async def crash_a_batch_before(rooms: Rooms, room: Room, member: Member,
                               queue_next: Callable[[], object]) -> None:
    """Queue a poisoned line and then whatever `queue_next` queues, both while a write is in
    flight, so the actor gathers the line into a batch and reads the next command ahead."""
    rooms.crash_on("boom")
    released = rooms.store.hang("append_chat")
    await say(room, member, "first")
    await rooms.store.wait_calls("append_chat", 1)
    await say(room, member, "boom")
    queue_next()
    await trio.testing.wait_all_tasks_blocked()  # what queue_next started has queued
    released.set()


async def test_a_leave_read_ahead_of_a_crashing_batch_is_not_lost(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    _, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    await trio.sleep(INTERVAL * 2)
    await crash_a_batch_before(rooms, room, ann, lambda: room.leave(bob))
    await trio.sleep(INTERVAL * 2)
    assert rooms.supervisor.restarts == 1
    assert (await snapshot(room)).users_count == 1
    assert counts(ann)[-1] == 1


async def test_a_request_read_ahead_of_a_crashing_batch_is_answered(
    autojump_clock: MockClock, nursery: trio.Nursery, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join(room, "ann")
    answers: list[object] = []

    async def update() -> None:
        answers.append(await room.ask(lambda reply: Update(
            event.owner_id, "street 2", Coordinates(3.0, 4.0), reply)))

    asked = trio.current_time()
    await crash_a_batch_before(rooms, room, ann, lambda: nursery.start_soon(update))
    await trio.testing.wait_all_tasks_blocked()
    assert rooms.supervisor.restarts == 1
    assert answers == [None]
    assert trio.current_time() == asked  # answered by the restarted actor, not the deadline
    stored = await rooms.stored_event(event.id)
    assert stored.address == "street 2"


async def test_a_stop_read_ahead_of_a_crashing_batch_still_stops_the_room(
    autojump_clock: MockClock, nursery: trio.Nursery, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join(room, "ann")
    await crash_a_batch_before(rooms, room, ann,
                               lambda: nursery.start_soon(rooms.supervisor.stop))
    await trio.testing.wait_all_tasks_blocked()
    assert rooms.supervisor.restarts == 1
    assert rooms.ended.is_set()
    assert outbox(ann).close_code == CloseCode.GOING_AWAY
    assert await rooms.stored_chat(event.id) == ["first"]


async def test_a_request_read_ahead_of_a_crash_that_fails_the_room_is_refused_at_once(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    rooms = await start_rooms(nursery, actor_max_restarts=0)
    _, room = await rooms.open()
    ann = await join(room, "ann")
    codes: list[tuple[ErrorCode, ...]] = []

    async def get() -> None:
        codes.append(await refusal(room, Snapshot))

    asked = trio.current_time()
    await crash_a_batch_before(rooms, room, ann, lambda: nursery.start_soon(get))
    await trio.testing.wait_all_tasks_blocked()
    assert codes == [(ErrorCode.INTERNAL_ERROR,)]
    assert trio.current_time() == asked
    assert outbox(ann).close_code == CloseCode.INTERNAL_ERROR


# A command that fails on its own input.


@pytest.mark.parametrize(("address", "coordinates", "codes"), [
    pytest.param("a\ud800", Coordinates(1.0, 1.0), (ErrorCode.ADDRESS_IS_EMPTY,),
                 id="lone-surrogate"),
    pytest.param("", Coordinates(1.0, 1.0), (ErrorCode.ADDRESS_IS_EMPTY,), id="empty-address"),
    pytest.param("x", Coordinates(math.nan, 1.0), (ErrorCode.COORDINATES_IS_EMPTY,), id="nan"),
    pytest.param("x", Coordinates(1.0, -math.inf), (ErrorCode.COORDINATES_IS_EMPTY,),
                 id="infinity"),
    pytest.param("\udfff", Coordinates(math.inf, 1.0),
                 (ErrorCode.ADDRESS_IS_EMPTY, ErrorCode.COORDINATES_IS_EMPTY), id="both"),
])
async def test_an_update_with_values_no_store_can_hold_fails_only_itself(
    autojump_clock: MockClock, rooms: Rooms, address: str, coordinates: Coordinates,
    codes: tuple[ErrorCode, ...],
) -> None:
    event, room = await rooms.open()
    ann = await join(room, "ann")
    await trio.sleep(INTERVAL * 2)
    assert await refusal(room, lambda reply: Update(
        event.owner_id, address, coordinates, reply)) == codes
    assert rooms.supervisor.restarts == 0
    assert rooms.store.count("update_event") == 0
    assert await room.ask(lambda reply: Update(
        event.owner_id, "street 2", Coordinates(3.0, 4.0), reply)) is None
    assert payloads(outbox(ann).frames, "eventUpdated")[-1]["address"] == "street 2"
    stored = await rooms.stored_event(event.id)
    assert stored.address == "street 2"


async def test_a_chat_line_that_is_not_valid_text_is_dropped_and_the_room_goes_on(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    released = rooms.store.hang("append_chat")
    await say(room, ann, "first")
    await rooms.store.wait_calls("append_chat", 1)
    for text in ("a\ud800", "second", "\udc00"):  # one batch: the good line is kept
        await say(room, bob, text)
    released.set()
    await trio.testing.wait_all_tasks_blocked()
    await say(room, ann, "\ud800")  # a batch of nothing but a bad line writes nothing
    await trio.testing.wait_all_tasks_blocked()
    await say(room, ann, "third")
    await trio.testing.wait_all_tasks_blocked()
    assert rooms.supervisor.restarts == 0
    assert chat(ann) == chat(bob) == ["first", "second", "third"]
    assert await rooms.stored_chat(event.id) == ["first", "second", "third"]
    assert rooms.store.count("append_chat") == 3


# Media.


async def test_media_the_owner_adds_and_removes_is_stored_then_announced(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join(room, "ann")
    photo = EventMedia(new_id(), "image/png")
    assert await room.ask(lambda reply: AddMedia(event.owner_id, photo, reply)) is None
    assert (await snapshot(room)).event.media == (photo,)
    assert await room.ask(lambda reply: RemoveMedia(event.owner_id, photo.id, reply)) is None
    assert outbox(ann).frames[-2:] == [
        f'mediaAdded/{{"id":"{photo.id}","contentType":"image/png"}}', f"mediaRemoved/{photo.id}"]
    stored = await rooms.stored_event(event.id)
    assert stored.media == ()


async def test_media_changes_by_others_or_of_unknown_media_are_refused(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join(room, "ann")
    await trio.sleep(INTERVAL * 2)
    photo = EventMedia(new_id(), "image/png")
    stranger = ann.identity.user_id
    assert await refusal(room, lambda reply: AddMedia(stranger, photo, reply)) == (
        ErrorCode.USER_IS_NOT_OWNER,)
    assert await refusal(room, lambda reply: RemoveMedia(event.owner_id, photo.id, reply)) == (
        ErrorCode.MEDIA_NOT_FOUND,)
    assert len(outbox(ann).frames) == 1  # its eventUpdated on joining, nothing since
    assert rooms.store.count("add_event_media") == rooms.store.count("remove_event_media") == 0


# Close.


async def test_close_by_someone_else_is_refused_and_the_room_goes_on(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join(room, "ann")
    codes = await refusal(room, lambda reply: Close(ann.identity.user_id, reply))
    assert codes == (ErrorCode.USER_IS_NOT_OWNER,)
    await say(room, ann, "still open")
    await trio.testing.wait_all_tasks_blocked()
    assert chat(ann) == ["still open"]
    assert outbox(ann).close_code is None
    stored = await rooms.stored_event(event.id)
    assert stored.is_open


async def test_close_by_the_owner_ends_the_room_and_its_actor(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    assert f"event {event.id}" in running_tasks()
    assert await room.ask(lambda reply: Close(event.owner_id, reply)) is None
    await trio.testing.wait_all_tasks_blocked()
    for member in (ann, bob):
        assert outbox(member).frames[-1] == "closeEvent/"
        assert outbox(member).close_code == CloseCode.NORMAL
        assert not outbox(member).aborted
    assert rooms.supervisor.room(event.id) is None
    assert rooms.supervisor.in_range(-90, 90, -90, 90) == []
    stored = await rooms.stored_event(event.id)
    assert not stored.is_open
    assert await rooms.memory.open_event_of(event.owner_id) is None
    assert await refusal(room, Snapshot) == (ErrorCode.EVENT_NOT_FOUND,)
    assert f"event {event.id}" not in running_tasks()
    assert rooms.supervisor.restarts == 0


async def test_requests_queued_behind_the_owners_close_answer_event_not_found(
    autojump_clock: MockClock, nursery: trio.Nursery, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    released = rooms.store.hang("close_event")
    nursery.start_soon(room.ask, lambda reply: Close(event.owner_id, reply))
    await rooms.store.wait_calls("close_event", 1)
    late = Member(person("late"), RecordingOutbox())
    answers: list[tuple[ErrorCode, ...]] = []

    async def ask(make: Callable[[Reply], Command]) -> None:
        answers.append(await refusal(room, make))

    nursery.start_soon(ask, Snapshot)
    nursery.start_soon(ask, lambda reply: Join(late, reply))
    await trio.testing.wait_all_tasks_blocked()
    released.set()
    await trio.testing.wait_all_tasks_blocked()
    assert answers == [(ErrorCode.EVENT_NOT_FOUND,)] * 2
    assert outbox(late).close_code == CloseCode.NORMAL


# Shutdown.


async def test_stop_handles_queued_commands_then_finishes_members_with_1001(
    autojump_clock: MockClock, nursery: trio.Nursery, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    released = rooms.store.hang("append_chat")
    await say(room, ann, "1")
    await rooms.store.wait_calls("append_chat", 1)
    await say(room, bob, "2")
    await say(room, ann, "3")
    nursery.start_soon(rooms.supervisor.stop)
    await trio.testing.wait_all_tasks_blocked()
    assert not rooms.ended.is_set()  # a write is in flight and lines are queued
    released.set()
    await trio.testing.wait_all_tasks_blocked()
    assert rooms.ended.is_set()  # `run` has returned
    assert await rooms.stored_chat(event.id) == ["1", "2", "3"]
    for member in (ann, bob):
        assert chat(member) == ["1", "2", "3"]
        assert outbox(member).close_code == CloseCode.GOING_AWAY
        assert not outbox(member).aborted
    stored = await rooms.stored_event(event.id)
    assert stored.is_open


async def test_no_event_is_opened_while_stopping(autojump_clock: MockClock, rooms: Rooms) -> None:
    await rooms.supervisor.stop()
    owner = new_id()
    with pytest.raises(DomainError) as refused:
        await rooms.supervisor.open_event(owner, "late", "street 9", Coordinates(0.0, 0.0))
    assert refused.value.codes == (ErrorCode.INTERNAL_ERROR,)
    assert await rooms.memory.open_event_of(owner) is None
    assert rooms.supervisor.open_events == 0
    await trio.testing.wait_all_tasks_blocked()
    assert rooms.ended.is_set()


async def test_stop_returns_with_a_failed_room(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    rooms = await start_rooms(nursery, actor_max_restarts=0)
    event, room = await rooms.open()
    ann = await join(room, "ann")
    rooms.crash_on("boom")
    await say(room, ann, "boom")
    await trio.testing.wait_all_tasks_blocked()
    assert outbox(ann).close_code == CloseCode.INTERNAL_ERROR
    await rooms.supervisor.stop()
    await trio.testing.wait_all_tasks_blocked()
    assert rooms.ended.is_set()
    stored = await rooms.stored_event(event.id)
    assert stored.is_open


async def test_an_event_opened_while_stop_runs_is_stopped_too(
    autojump_clock: MockClock, nursery: trio.Nursery, rooms: Rooms,
) -> None:
    _, busy = await rooms.open()  # keeps `run` from returning until its write is done
    ann = await join(busy, "ann")
    write = rooms.store.hang("append_chat")
    await say(busy, ann, "last words")
    await rooms.store.wait_calls("append_chat", 1)
    stored = rooms.store.hang("add_event")
    opened: list[Event] = []

    async def open_late() -> None:
        event, _ = await rooms.open()
        opened.append(event)

    nursery.start_soon(open_late)
    await rooms.store.wait_calls("add_event", 2)
    await rooms.supervisor.stop()
    stored.set()
    await trio.testing.wait_all_tasks_blocked()
    [late] = opened
    assert rooms.supervisor.room(late.id) is None  # started, told to stop, ended
    write.set()
    await trio.testing.wait_all_tasks_blocked()
    assert rooms.ended.is_set()
    assert outbox(ann).close_code == CloseCode.GOING_AWAY


# Back-pressure.


async def test_send_to_a_full_inbox_gives_up_after_the_reply_deadline(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    rooms = await start_rooms(nursery, actor_inbox_size=2)
    event, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    released = rooms.store.hang("append_chat")
    await say(room, ann, "1")
    await rooms.store.wait_calls("append_chat", 1)
    await say(room, ann, "2")
    await say(room, ann, "3")  # the inbox is full now
    asked = trio.current_time()
    assert not await room.send(Chat(ann.identity, "4"))
    assert trio.current_time() - asked == pytest.approx(rooms.config.actor_reply_timeout_seconds)
    released.set()
    await trio.testing.wait_all_tasks_blocked()
    assert await rooms.stored_chat(event.id) == ["1", "2", "3"]
    assert chat(ann) == chat(bob) == ["1", "2", "3"]


async def test_leave_never_waits_and_takes_effect_when_the_actor_runs_again(
    autojump_clock: MockClock, nursery: trio.Nursery,
) -> None:
    rooms = await start_rooms(nursery, actor_inbox_size=2)
    _, room = await rooms.open()
    ann, bob = await join(room, "ann"), await join(room, "bob")
    await trio.sleep(INTERVAL * 2)
    released = rooms.store.hang("append_chat")
    await say(room, ann, "1")
    await rooms.store.wait_calls("append_chat", 1)
    await say(room, ann, "2")
    await say(room, ann, "3")  # the inbox is full now
    room.leave(bob)  # synchronous: it cannot wait, and the full inbox does not lose it
    await trio.sleep(INTERVAL * 2)
    assert counts(ann) == [1, 2]  # the actor is still stuck in its write
    released.set()
    await trio.testing.wait_all_tasks_blocked()
    assert counts(ann) == [1, 2, 1]
    assert (await snapshot(room)).users_count == 1


# events/get from the actor's memory.


def chat_messages(view: EventView) -> list[str]:
    assert view.chat is not None
    return [json.loads(line)["message"] for line in view.chat]


async def test_snapshots_after_the_first_read_nothing_from_the_store(
    rooms: Rooms, autojump_clock: MockClock
) -> None:
    event, room = await rooms.open()
    await rooms.memory.append_chat(event.id, 0, [ChatMessage(new_id(), "old", "", "before")])
    ann = await join(room)
    await say(room, ann, "one")
    await trio.testing.wait_all_tasks_blocked()
    assert chat_messages(await snapshot(room)) == ["before", "one"]
    reads = rooms.store.count("chat")
    await say(room, ann, "two")
    view = await snapshot(room)
    assert chat_messages(view) == ["before", "one", "two"]
    assert view.chat_length == 3
    assert rooms.store.count("chat") == reads  # the lines came from the actor


async def test_a_chat_longer_than_the_bound_is_left_to_the_store(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    rooms = await start_rooms(nursery, chat_memory_lines=3, chat_rate_per_second=1e6)
    _, room = await rooms.open()
    ann = await join(room)
    for i in range(3):
        await say(room, ann, f"line {i}")
    await trio.testing.wait_all_tasks_blocked()
    assert chat_messages(await snapshot(room)) == ["line 0", "line 1", "line 2"]
    await say(room, ann, "line 3")
    view = await snapshot(room)
    assert view.chat is None  # over the bound: the caller reads the store
    assert view.chat_length == 4


# A cluster's room: its mirror (vpiska/actors/view.py) holds every change before anyone can
# learn of it, since other nodes answer events/get from the mirror.


class GatedMirror:
    """A Mirror whose writes wait at a gate the test opens; it keeps every view written."""

    def __init__(self) -> None:
        self.views: list[tuple[EventView, int]] = []
        self.gate = trio.Event()
        self.gate.set()

    def close_gate(self) -> None:
        self.gate = trio.Event()

    async def show(self, epoch: int, view: EventView, known_lines: int) -> None:
        assert epoch == 7
        await self.gate.wait()
        self.views.append((view, known_lines))

    @property
    def last(self) -> EventView:
        return self.views[-1][0]


async def mirrored_room(nursery: trio.Nursery, memory: MemoryStore,
                        mirror: GatedMirror) -> tuple[Event, Room]:
    event = await EventSupervisor(memory, Config()).create_event(
        new_id(), "party", "street 1", Coordinates(1.0, 2.0))
    await memory.claim_event(event.id, 7, "node-a")
    room = Room(event.id, event.owner_id, inbox_size=64, reply_timeout=REPLY_TIMEOUT,
                epoch=7, mirror=mirror)
    actor = EventActor(room, event, 0, memory, MapIndex(), Config(), epoch=7)
    nursery.start_soon(actor.run)
    return event, room


async def while_the_mirror_waits(mirror: GatedMirror, change: Callable[[], Awaitable[object]],
                                 nursery: trio.Nursery) -> trio.Event:
    """Start `change` with the mirror's gate shut and let it run as far as it can; the
    returned event is set once `change` has returned (the gate is opened by the caller)."""
    mirror.close_gate()
    done = trio.Event()

    async def run() -> None:
        await change()
        done.set()

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return done


async def test_a_cluster_room_mirrors_each_change_before_anyone_learns_of_it(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    memory, mirror = MemoryStore(), GatedMirror()
    event, room = await mirrored_room(nursery, memory, mirror)
    await trio.testing.wait_all_tasks_blocked()
    assert mirror.views == [(EventView(event, 0, 0, ()), 0)]  # before its first answer
    ann = Member(person("ann"), RecordingOutbox())
    joined = await while_the_mirror_waits(
        mirror, partial(room.ask, lambda reply: Join(ann, reply)), nursery)
    assert not joined.is_set()
    mirror.gate.set()
    await joined.wait()
    assert mirror.last.users_count == 1

    said = await while_the_mirror_waits(mirror, partial(say, room, ann, "hi"), nursery)
    assert [line.message for line in await memory.chat(event.id)] == ["hi"]  # stored first
    assert not chat(ann)
    mirror.gate.set()
    await said.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert chat(ann) == ["hi"]
    assert mirror.last.chat_length == 1
    assert mirror.views[-1][1] == 0  # it held no line before: the line went with the view
    assert mirror.last.chat is not None
    assert '"message":"hi"' in mirror.last.chat[0]

    updated = await while_the_mirror_waits(mirror, partial(room.ask, lambda reply: Update(
        event.owner_id, "moved", Coordinates(3, 4), reply)), nursery)
    assert not any('"address":"moved"' in frame for frame in outbox(ann).frames)
    mirror.gate.set()
    await updated.wait()
    assert mirror.last.event.address == "moved"
    assert mirror.views[-1][1] == 1  # the line it held already stays
    assert any('"address":"moved"' in frame for frame in outbox(ann).frames)

    closed = await while_the_mirror_waits(
        mirror, partial(room.ask, lambda reply: Close(event.owner_id, reply)), nursery)
    assert outbox(ann).close_code is None
    mirror.gate.set()
    await closed.wait()
    assert not mirror.last.event.is_open
    assert outbox(ann).close_code is CloseCode.NORMAL


async def test_joins_queued_together_are_mirrored_once(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    mirror = GatedMirror()
    _, room = await mirrored_room(nursery, MemoryStore(), mirror)
    await trio.testing.wait_all_tasks_blocked()
    before = len(mirror.views)
    async with trio.open_nursery() as joins:
        for name in ("ann", "bob", "cid"):
            joins.start_soon(join, room, name)
    assert len(mirror.views) == before + 1
    assert mirror.last.users_count == 3


async def test_a_handover_takes_the_chat_lines_queued_behind_it(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """A node leaving the cluster hands its rooms over: lines that reached the room before it
    ended (sockets on other nodes send them until they see the Handover) are stored and
    shown here, not dropped with the room, also those behind another command; a join
    behind them is refused, its socket told to reconnect (the event moves)."""
    memory = MemoryStore()
    event = await EventSupervisor(memory, Config()).create_event(
        new_id(), "party", "street 1", Coordinates(1.0, 2.0))
    room = Room(event.id, event.owner_id, inbox_size=64, reply_timeout=REPLY_TIMEOUT)
    ann, cid = (Member(person(name), RecordingOutbox()) for name in ("ann", "cid"))
    joined, answers = trio.open_memory_channel[outcome.Outcome[object]](2)
    for command in (Join(ann, joined.clone()), Chat(ann.identity, "one"), Stop(hand_over=True),
                    Chat(person("bob"), "two"), Chat(ann.identity, "three"),
                    Join(cid, joined.clone()), Chat(ann.identity, "four")):
        room.offer(command)
    actor = EventActor(room, event, 0, memory, MapIndex(), Config())
    assert await actor.run() is Exit.STOPPED
    room.shut(CloseCode.GOING_AWAY)  # as the supervisor does after a Stop
    assert [line.message for line in await memory.chat(event.id)] == [
        "one", "two", "three", "four"]
    assert chat(ann) == ["one", "two", "three", "four"]
    assert outbox(ann).close_code is CloseCode.SERVICE_RESTART
    assert outbox(cid).close_code is CloseCode.SERVICE_RESTART  # the join behind: refused
    assert isinstance(answers.receive_nowait().unwrap(), Joined)
    with pytest.raises(DomainError):
        answers.receive_nowait().unwrap()


class SlowChatStore:
    """A MemoryStore whose chat writes take WRITE_SECONDS (of the test's virtual time)."""

    WRITE_SECONDS = 0.01

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner

    async def append_chat(self, event_id: str, first_seq: int, lines: Sequence[ChatMessage],
                          *, epoch: int | None = None) -> None:
        await trio.sleep(self.WRITE_SECONDS)
        await self._inner.append_chat(event_id, first_seq, lines, epoch=epoch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_handover_ends_though_lines_keep_coming(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """Sockets on other nodes talk until they see the Handover, which the room says only once
    it has written what it took: it takes the lines queued when it takes its Stop, not
    those that come while it writes them, or it would write for as long as they talk. (It
    did: until the next owner fenced it, and its last lines were lost.)"""
    memory = MemoryStore()
    event = await EventSupervisor(memory, Config()).create_event(
        new_id(), "party", "street 1", Coordinates(1.0, 2.0))
    room = Room(event.id, event.owner_id, inbox_size=64, reply_timeout=REPLY_TIMEOUT)
    bob = person("bob")
    for command in (Chat(bob, "one"), Stop(hand_over=True), Chat(bob, "two")):
        room.offer(command)
    said = ["one", "two"]

    async def talk() -> None:  # a line every millisecond, a tenth of a write
        for k in itertools.count():
            line = f"later-{k}"
            try:
                room.offer(Chat(bob, line))  # the inbox holds ten writes' worth: never full
            except trio.BrokenResourceError:
                return  # the room has ended
            said.append(line)
            await trio.sleep(SlowChatStore.WRITE_SECONDS / 10)

    nursery.start_soon(talk)
    actor = EventActor(room, event, 0, cast(Store, SlowChatStore(memory)), MapIndex(),
                       Config())
    with trio.fail_after(1):
        assert await actor.run() is Exit.STOPPED
    room.shut(CloseCode.GOING_AWAY)  # as the supervisor does after a Stop
    assert room.handing_over  # the node sends other nodes' lines on from now on
    stored = [line.message for line in await memory.chat(event.id)]
    assert stored[:2] == ["one", "two"]
    assert stored == said[: len(stored)]  # in order, none missing, up to where it stopped
    assert len(stored) < len(said)  # what came after the Stop was taken is not its to write


async def test_started_once_every_room_of_the_start_has_its_actor(nursery: trio.Nursery) -> None:
    """The server freezes the heap again when `started` is set (vpiska/server.py): set once
    every open event of the start has its actor, or has failed to get one, and not before."""
    memory = MemoryStore()
    store = FaultyStore(memory)
    events = [Event(new_id(), new_id(), f"party {i}", "street", Coordinates(1, 1), utc_now())
              for i in range(3)]
    for event in events:
        await memory.add_event(event)
    released = store.hang("chat_length")
    store.fail("chat_length", lambda event_id: event_id == events[2].id)
    supervisor = EventSupervisor(cast(Store, store), Config())
    await nursery.start(supervisor.run)
    with trio.fail_after(5):
        await store.wait_calls("chat_length", 3)  # every room waits for its store read
    assert not supervisor.started.is_set()
    released.set()
    with trio.fail_after(5):
        await supervisor.started.wait()
    for event in events[:2]:
        room = supervisor.room(event.id)
        assert room is not None
        with trio.fail_after(5):
            view = await room.ask(Snapshot)
        assert isinstance(view, EventView)
        assert view.event.id == event.id
    supervisor.refuse_new_events()
    await supervisor.stop()
