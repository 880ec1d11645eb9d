"""A member's socket as the room's Outbox: what reaches the wire, in which order, in how many
writes (vpiska/http/outbox.py). A sink that records writes stands in for the TCP socket."""

from __future__ import annotations

from typing import Any, cast

import pytest

from vpiska.actors import OutboxFull
from vpiska.actors.frames import Frame
from vpiska.http.outbox import SocketOutbox, wire_bytes


class Sink:
    """Takes up to `room` bytes per write, as a socket with that much buffer space would."""

    def __init__(self, room: int = 1 << 20) -> None:
        self.room = room
        self.writes: list[bytes] = []

    def write_now(self, data: bytes) -> int:
        taken = data[: self.room]
        if taken:
            self.writes.append(taken)
        return len(taken)


def outbox(sink: Sink, capacity: int = 100) -> SocketOutbox:
    return SocketOutbox(capacity, cast(Any, sink))


def frames(count: int) -> list[Frame]:
    return [Frame(f"chatMessage/{{\"message\":\"line {n}\"}}") for n in range(count)]


def test_a_batch_to_an_idle_socket_is_one_write_of_every_frame_in_order() -> None:
    sink = Sink()
    box = outbox(sink)
    batch = frames(3)
    box.deliver_all(batch)
    assert sink.writes == [b"".join(wire_bytes(frame) for frame in batch)]
    assert not box.pending


def test_what_a_full_socket_leaves_is_queued_and_later_frames_stay_behind_it() -> None:
    sink = Sink(room=10)
    box = outbox(sink)
    batch, later = frames(3), frames(5)[3:]
    box.deliver_all(batch)
    box.deliver_all(later)  # something is in flight: no direct write may overtake it
    assert len(sink.writes) == 1
    sent = sink.writes[0] + b"".join(cast(list[bytes], box.take()))
    assert sent == b"".join(wire_bytes(frame) for frame in batch + later)


def test_a_batch_behind_queued_frames_counts_each_frame_against_the_capacity() -> None:
    sink = Sink(room=0)
    box = outbox(sink, capacity=4)
    box.deliver_all(frames(3))  # the socket takes nothing: one queued item
    box.deliver_all(frames(3))  # now queued frame by frame
    with pytest.raises(OutboxFull):
        box.deliver_all(frames(3))
