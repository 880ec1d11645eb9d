"""Acknowledged lines and erasing in the room itself (vpiska/actors/event.py), on the virtual
clock over a MemoryStore: an ack only once the line's write has returned, one line per id and
sender whatever the batches and the incarnations, and an erased line everywhere the room shows
it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from tests.helpers.fakes import RecordingOutbox
from tests.helpers.rooms import Rooms, join, outbox, person, refusal, snapshot, start_rooms
from vpiska.actors import Member, Room
from vpiska.actors.commands import Chat, Join, Joined, RemoveChat
from vpiska.actors.lines import REMEMBERED_LINES, SentIds
from vpiska.errors import ErrorCode


@pytest.fixture
async def rooms(nursery: trio.Nursery) -> Rooms:
    return await start_rooms(nursery)


async def join_v2(room: Room, name: str = "ann", capacity: int = 1000) -> Member:
    member = Member(person(name), RecordingOutbox(capacity), version=2)
    joined = await room.ask(lambda reply: Join(member, reply))
    assert isinstance(joined, Joined)
    return member


async def send(room: Room, member: Member, client_id: str, text: str) -> None:
    assert await room.send(Chat(member.identity, text, client_id, member))


def frames(member: Member, prefix: str) -> list[Any]:
    return [json.loads(text[len(prefix) + 1:]) for text in outbox(member).frames
            if text.startswith(prefix + "/")]


async def test_an_ack_goes_out_once_the_batchs_write_has_returned(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join_v2(room)
    released = rooms.store.hang("append_chat")
    await send(room, ann, "a", "first")
    await rooms.store.wait_calls("append_chat", 1)
    await send(room, ann, "b", "second")  # queued behind the write in flight: the next batch
    await trio.testing.wait_all_tasks_blocked()
    assert frames(ann, "ack") == []
    released.set()
    await snapshot(room)  # a sentinel through the actor, after both batches
    assert frames(ann, "ack") == [{"id": "a", "seq": 1}, {"id": "b", "seq": 2}]
    assert [text.split("/")[0] for text in outbox(ann).frames[-4:]] == [
        "chatMessage", "ack", "chatMessage", "ack"]
    assert await rooms.stored_chat(event.id) == ["first", "second"]


async def test_one_id_twice_in_one_batch_is_one_line_acknowledged_twice(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann, bob = await join_v2(room, "ann"), await join_v2(room, "bob")
    released = rooms.store.hang("append_chat")
    await send(room, ann, "warm-up", "0")
    await rooms.store.wait_calls("append_chat", 1)
    await send(room, ann, "x", "once")
    await send(room, ann, "x", "once")
    await send(room, bob, "x", "bob's own")  # another sender's id is another line
    released.set()
    await snapshot(room)
    assert [len(args[2]) for name, args in rooms.store.calls if name == "append_chat"] == [1, 2]
    assert frames(ann, "ack") == [{"id": "warm-up", "seq": 1}, {"id": "x", "seq": 2},
                                  {"id": "x", "seq": 2}]
    assert frames(bob, "ack") == [{"id": "x", "seq": 3}]
    assert await rooms.stored_chat(event.id) == ["0", "once", "bob's own"]


async def test_a_line_whose_write_failed_is_not_acknowledged_and_its_resend_is_stored(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join_v2(room)
    await send(room, ann, "a", "kept")
    await snapshot(room)  # written on its own: a batch fails or lands as a whole
    rooms.crash_on("poison")
    await send(room, ann, "p", "poison")
    await snapshot(room)  # answered by the restarted actor
    assert frames(ann, "ack") == [{"id": "a", "seq": 1}]
    rooms.store.heal("append_chat")
    await send(room, ann, "p", "poison")
    await send(room, ann, "a", "kept")  # the new incarnation knows it from the store
    await snapshot(room)
    assert frames(ann, "ack") == [{"id": "a", "seq": 1}, {"id": "p", "seq": 2},
                                  {"id": "a", "seq": 1}]
    assert await rooms.stored_chat(event.id) == ["kept", "poison"]


async def test_a_chat_message_line_needs_no_id_and_gets_no_ack(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    ann = await join_v2(room)
    assert await room.send(Chat(ann.identity, "plain"))
    await snapshot(room)
    [line] = frames(ann, "chatMessage")
    assert (line["seq"], line["message"]) == (1, "plain")
    assert frames(ann, "ack") == []


async def test_the_host_erases_a_line_everywhere_the_room_shows_it(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    event, room = await rooms.open()
    new = await join_v2(room, "new")
    old = await join(room, "old")
    for text in ("a", "b", "c"):
        await send(room, new, text, text)
    await snapshot(room)  # the room holds the chat from here on
    assert await refusal(room, lambda reply: RemoveChat(new.identity.user_id, 2, reply)) == (
        ErrorCode.USER_IS_NOT_OWNER,)
    assert await refusal(room, lambda reply: RemoveChat(event.owner_id, 0, reply)) == (
        ErrorCode.CHAT_MESSAGE_NOT_FOUND,)
    assert await refusal(room, lambda reply: RemoveChat(event.owner_id, 4, reply)) == (
        ErrorCode.CHAT_MESSAGE_NOT_FOUND,)
    await room.ask(lambda reply: RemoveChat(event.owner_id, 2, reply))
    view = await snapshot(room)
    assert view.chat is not None
    assert [json.loads(line)["message"] for line in view.chat] == ["a", "", "c"]
    assert list(json.loads(view.chat[1])) == ["userId", "userName", "userImageId", "message"]
    assert await rooms.stored_chat(event.id) == ["a", "", "c"]
    assert [text for text in outbox(new).frames if text.startswith("chatRemoved/")] == [
        "chatRemoved/2"]
    assert not [text for text in outbox(old).frames if text.startswith("chatRemoved/")]


def test_a_flood_of_new_ids_keeps_at_most_the_windows_worth() -> None:
    window = 100
    ids = SentIds({}, window)
    for index in range(10 * window):
        ids.add(("flooder", f"id-{index}"), index)
        assert len(ids) <= window
    assert len(ids) == window
    chat_length = 10 * window
    assert ids.line(("flooder", f"id-{chat_length - window}"), chat_length) == (
        chat_length - window)
    assert ids.line(("flooder", f"id-{chat_length - window - 1}"), chat_length) is None


def test_an_id_falls_out_of_the_window_as_the_chat_grows_without_ids() -> None:
    ids = SentIds({("ann", "a"): 3}, 10)
    assert ids.line(("ann", "a"), 13) == 3
    assert ids.line(("ann", "a"), 14) is None  # ten lines without an id came after it


def test_an_id_sent_again_after_its_window_is_its_new_lines() -> None:
    ids = SentIds({}, 10)
    ids.add(("ann", "a"), 0)
    ids.add(("ann", "a"), 20)  # resent when forgotten: stored as line 20
    ids.add(("bob", "b"), 25)  # line 0 falls out of the window, line 20 stays
    assert (ids.line(("ann", "a"), 26), len(ids)) == (20, 2)


async def test_a_resend_within_the_window_is_recognised_and_one_beyond_it_is_stored_again(
    autojump_clock: MockClock, rooms: Rooms,
) -> None:
    """A client sending ever new ids: the room remembers the last REMEMBERED_LINES lines'
    ids, so a resend among them gets its first ack, also from a new incarnation that reads
    them from the store; an older one is a new line."""
    event, room = await rooms.open()
    ann = await join_v2(room, capacity=10 * REMEMBERED_LINES)  # not a slow consumer
    for n in range(REMEMBERED_LINES + 1):
        await send(room, ann, f"id-{n}", "flood")
    await snapshot(room)
    assert await rooms.memory.chat_length(event.id) == REMEMBERED_LINES + 1
    outbox(ann).frames.clear()
    await send(room, ann, "id-1", "resent, remembered")
    await send(room, ann, "id-0", "resent, forgotten")
    await snapshot(room)
    assert frames(ann, "ack") == [{"id": "id-1", "seq": 2},
                                  {"id": "id-0", "seq": REMEMBERED_LINES + 2}]

    rooms.crash_on("poison")  # a new incarnation reads the ids from the store
    await send(room, ann, "p", "poison")
    await snapshot(room)
    rooms.store.heal("append_chat")
    outbox(ann).frames.clear()
    # The chat has REMEMBERED_LINES + 2 lines: the first two fell out of the window.
    await send(room, ann, "id-2", "resent to the new incarnation, remembered")
    await send(room, ann, "id-1", "resent to the new incarnation, forgotten")
    await snapshot(room)
    assert frames(ann, "ack") == [{"id": "id-2", "seq": 3},
                                  {"id": "id-1", "seq": REMEMBERED_LINES + 3}]
    assert [args[1:] for name, args in rooms.store.calls if name == "chat_client_ids"] == [
        (0,), (2,)]  # the second incarnation read the ids of the last lines only
    chat_length = REMEMBERED_LINES + 3
    assert await rooms.memory.chat_length(event.id) == chat_length
