"""The event's actor and `RemoveMember` (API.md, "The host in charge"): what the room does,
on virtual time, without sockets (tests/test_members_remove.py has them)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.helpers.fakes import RecordingOutbox
from tests.helpers.rooms import Rooms, join, outbox, person, refusal, start_rooms
from vpiska.actors import CloseCode, Member
from vpiska.actors.commands import Join, RemoveMember
from vpiska.errors import ErrorCode


@pytest.fixture
async def rooms(nursery: trio.Nursery) -> Rooms:
    return await start_rooms(nursery)


async def test_every_socket_of_the_removed_user_closes_and_the_others_stay(
    rooms: Rooms, autojump_clock: trio.testing.MockClock
) -> None:
    event, room = await rooms.open()
    guest = person("guest")
    phone, tablet = await join(room, guest), await join(room, guest)
    other = await join(room, "other")
    await room.ask(lambda reply: RemoveMember(event.owner_id, guest.user_id, False, reply))
    assert outbox(phone).close_code == outbox(tablet).close_code == CloseCode.REMOVED
    assert outbox(other).close_code is None
    assert room.users_count == 1
    assert (await rooms.stored_event(event.id)).banned == frozenset()
    back = await join(room, guest)  # not banned: may come back
    assert outbox(back).close_code is None


async def test_a_banned_users_join_that_got_past_the_handshake_is_turned_away(
    rooms: Rooms, autojump_clock: trio.testing.MockClock
) -> None:
    """A handshake checked before the ban, its Join queued after it: the room, not the
    handshake, has the last word."""
    event, room = await rooms.open()
    guest = person("guest")
    late = Member(guest, RecordingOutbox())
    waiting = Member(guest, RecordingOutbox())
    await room.ask(lambda reply: RemoveMember(event.owner_id, guest.user_id, True, reply))
    await room.enter(late)
    assert await refusal(room, lambda reply: Join(waiting, reply)) == (
        ErrorCode.EVENT_NOT_FOUND,)
    assert outbox(late).close_code == outbox(waiting).close_code == CloseCode.REMOVED
    assert outbox(late).frames == outbox(waiting).frames == []
    assert room.users_count == 0
    assert room.banned == {guest.user_id}
    assert (await rooms.stored_event(event.id)).banned == {guest.user_id}


async def test_only_the_host_removes_and_never_himself(
    rooms: Rooms, autojump_clock: trio.testing.MockClock
) -> None:
    event, room = await rooms.open()
    guest = await join(room, "guest")
    assert await refusal(room, lambda reply: RemoveMember(
        guest.identity.user_id, event.owner_id, True, reply)) == (ErrorCode.USER_IS_NOT_OWNER,)
    assert await refusal(room, lambda reply: RemoveMember(
        event.owner_id, event.owner_id, True, reply)) == (ErrorCode.OWNER_CANNOT_BE_REMOVED,)
    assert outbox(guest).close_code is None
    assert room.banned == set()
