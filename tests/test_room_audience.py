"""Which sockets see which frames: v1 sockets see what the older backend's clients know, v2
sockets what they opted in to, each in the room's one order (vpiska/actors/room.py)."""

from __future__ import annotations

from tests.helpers.fakes import RecordingOutbox
from vpiska.actors.frames import Audience, Frame
from vpiska.actors.member import Member
from vpiska.actors.room import Room
from vpiska.domain import Identity


def room() -> Room:
    return Room("event", "host", inbox_size=10, reply_timeout=1.0)


def member(version: int, user: str = "u1") -> tuple[Member, RecordingOutbox]:
    outbox = RecordingOutbox()
    return Member(Identity(user, user, ""), outbox, version=version), outbox


async def test_each_version_sees_its_own_frames_of_a_broadcast_in_order() -> None:
    here = room()
    (old, old_out), (new, new_out) = member(1, "u1"), member(2, "u2")
    here.add(old)
    here.add(new)
    here.broadcast_lines([Frame("one/v1", Audience.V1), Frame("one/v2", Audience.V2),
                          Frame("two/v1", Audience.V1), Frame("two/v2", Audience.V2)], 0)
    here.broadcast(Frame("both/"))
    here.broadcast(Frame("presence/", Audience.V2))
    assert old_out.take() == ["one/v1", "two/v1", "both/"]
    assert new_out.take() == ["one/v2", "two/v2", "both/", "presence/"]


async def test_a_frame_told_to_one_member_reaches_only_it() -> None:
    here = room()
    (first, first_out), (second, second_out) = member(2, "u1"), member(2, "u1")
    here.add(first)
    here.add(second)
    here.tell(first, Frame("ack/1", Audience.V2))
    assert first_out.take() == ["ack/1"]
    assert second_out.take() == []


async def test_a_member_too_slow_for_a_told_frame_is_dropped() -> None:
    here = room()
    slow, slow_out = member(2)
    slow_out.capacity = 0
    here.add(slow)
    here.tell(slow, Frame("ack/1", Audience.V2))
    assert slow_out.aborted
    assert here.users_count == 0
