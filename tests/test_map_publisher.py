"""The map changes an event's actor makes, told through the publisher it is given
(vpiska/actors/map_publisher.py), and a cluster node's publisher, which sends them on in order
(vpiska/cluster/map_notices.py). Fakes stand in for the publisher and the bus; time is trio's
virtual clock."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from coredis.exceptions import ConnectionError as RedisConnectionError
from trio.testing import MockClock

from tests.helpers.fakes import RecordingOutbox
from vpiska.actors import CloseCode, EventSupervisor, EventView, Member, Room
from vpiska.actors.commands import Chat, Close, Join, Joined, Update
from vpiska.actors.frames import Frame
from vpiska.actors.geo import MapIndex
from vpiska.cluster import map_notices, protocol, redis
from vpiska.cluster.map_notices import MapNotices
from vpiska.cluster.protocol import Notice, decode
from vpiska.config import Config
from vpiska.domain import Coordinates, Identity, new_id
from vpiska.errors import DomainError
from vpiska.store import MemoryStore

START, MOVED = Coordinates(1.0, 2.0), Coordinates(3.0, 4.0)


class RecordingMap:
    """A MapPublisher that keeps what it is told, and whether the node's own index already
    showed the change when it was told."""

    def __init__(self, index: MapIndex) -> None:
        self._index = index
        self.told: list[tuple[str, str, bool]] = []

    def moved(self, event_id: str, coordinates: Coordinates) -> None:
        here = self._index.within(coordinates.x, coordinates.x, coordinates.y, coordinates.y)
        self.told.append(("moved", event_id, [s.event_id for s in here] == [event_id]))

    def closed(self, event_id: str) -> None:
        self.told.append(("closed", event_id, event_id not in self._index.event_ids()))


async def test_an_owner_s_move_and_close_are_published_once_its_own_map_shows_them(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    index = MapIndex()
    published = RecordingMap(index)
    supervisor = EventSupervisor(MemoryStore(), Config(), index=index, map_publisher=published)
    await nursery.start(supervisor.run)
    owner = new_id()
    event = await supervisor.open_event(owner, "party", "street 1", START)
    room = supervisor.room(event.id)
    assert room is not None
    with pytest.raises(DomainError):  # not the owner: nothing moves, nothing is told
        await room.ask(lambda reply: Update(new_id(), "moved", MOVED, reply))
    assert published.told == []
    await room.ask(lambda reply: Update(owner, "moved", MOVED, reply))
    await room.ask(lambda reply: Close(owner, reply))
    assert published.told == [("moved", event.id, True), ("closed", event.id, True)]


class RecordingPublisher:
    """A cluster room's Publisher (vpiska/actors/room.py) that keeps each message's kind and
    number."""

    def __init__(self) -> None:
        self.numbered: list[tuple[str, int]] = []

    def frame(self, room: Room, seq: int, frame: Frame, chat_index: int | None) -> None:
        self.numbered.append(("frame", seq))

    def direct(self, room: Room, seq: int, member: Member, frame: Frame) -> None:
        self.numbered.append(("direct", seq))

    def hello(self, room: Room, seq: int, chat_length: int) -> None:
        self.numbered.append(("hello", seq))

    def handover(self, room: Room, seq: int) -> None:
        self.numbered.append(("handover", seq))

    def close_all(self, room: Room, seq: int, code: CloseCode) -> None:
        self.numbered.append(("close_all", seq))

    def close_sockets(self, room: Room, seq: int, members: Sequence[Member],
                      code: CloseCode) -> None:
        self.numbered.append(("close_sockets", seq))

    def banned(self, room: Room, user_id: str) -> None:
        pass

    def counted(self, room: Room, users_count: int) -> None:
        pass


class NoMirror:
    async def show(self, epoch: int, view: EventView, known_lines: int) -> None:
        pass


async def test_a_cluster_room_numbers_what_it_publishes_and_its_end_is_told_to_its_node(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """The room counts its messages itself (the publisher is handed each number), from its
    actor's Hello to its last; the node that activated it hears of its end, to free the
    lease."""
    store, publisher, ended = MemoryStore(), RecordingPublisher(), list[str]()
    supervisor = EventSupervisor(store, Config(), serve_all=False)
    await nursery.start(supervisor.run)
    owner = new_id()
    event = await supervisor.create_event(owner, "party", "street 1", START)
    room = await supervisor.activate(event.id, 1, "node-a/1", publisher, NoMirror(),
                                     ended=ended.append)
    assert room is not None
    ann = Member(Identity(new_id(), "ann", ""), RecordingOutbox())
    joined = await room.ask(lambda reply: Join(ann, reply))
    assert isinstance(joined, Joined)
    assert joined.seq == 1  # the Hello: what the room publishes after the join reaches it
    assert await room.send(Chat(ann.identity, "hi"))
    await room.ask(lambda reply: Close(owner, reply))
    await trio.testing.wait_all_tasks_blocked()
    kinds = [kind for kind, _ in publisher.numbered]
    assert kinds[0] == "hello"
    assert kinds[-1] == "close_all"
    assert [seq for _, seq in publisher.numbered] == list(range(1, len(kinds) + 1))
    assert room.seq == len(kinds)
    assert ended == [event.id]
    assert supervisor.room(event.id) is None


class FakeBus:
    """The cluster channel: what is published on it. Each PUBLISH takes virtual time, less
    than the one before it (notices published at once would overtake each other); `failing`
    makes that many calls fail as a Redis away would; `held`, until set, makes them wait."""

    PUBLISH_SECONDS = 0.01

    def __init__(self) -> None:
        self.published: list[Notice] = []
        self.calls = 0
        self.failing = 0
        self.held: trio.Event | None = None
        self._changed = trio.Event()

    async def publish(self, channel: str, data: bytes) -> int:
        assert channel == redis.CLUSTER_CHANNEL
        self.calls += 1
        self._tell()
        if self.held is not None:
            await self.held.wait()
        await trio.sleep(self.PUBLISH_SECONDS / self.calls)
        if self.failing:
            self.failing -= 1
            raise RedisConnectionError("Redis is away")
        message = decode(data)
        assert isinstance(message, Notice)
        self.published.append(message)
        self._tell()
        return 1

    def _tell(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, *, calls: int = 0, published: int = 0) -> None:
        with trio.fail_after(1):
            while self.calls < calls or len(self.published) < published:
                await self._changed.wait()

    def said(self) -> list[tuple[object, str]]:
        return [(notice.op, notice.event_id) for notice in self.published]


async def test_map_notices_reach_the_cluster_channel_in_the_order_they_were_made(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    bus = FakeBus()
    notices = MapNotices(bus)
    nursery.start_soon(notices.run)
    notices.moved("e1", MOVED)  # told before the sender runs: kept for it
    notices.closed("e1")
    notices.moved("e2", START)
    await bus.wait_until(published=3)
    assert bus.said() == [(protocol.Moved(3.0, 4.0), "e1"), (protocol.Closed(), "e1"),
                          (protocol.Moved(1.0, 2.0), "e2")]


async def test_notices_redis_cannot_take_are_dropped_with_one_warning_and_the_next_go(
    nursery: trio.Nursery, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    bus = FakeBus()
    bus.failing = 3
    notices = MapNotices(bus)
    nursery.start_soon(notices.run)
    with caplog.at_level(logging.INFO, logger=map_notices.__name__):
        for k in range(4):
            notices.closed(f"e{k}")
        await bus.wait_until(published=1)
    assert bus.said() == [(protocol.Closed(), "e3")]
    assert [(r.levelname, r.message) for r in caplog.records] == [
        ("WARNING", "map notices not published: Redis unreachable"),
        ("INFO", "map notices not published: Redis unreachable: over")]


async def test_notices_past_the_bound_are_dropped_with_one_warning_per_overflow(
    nursery: trio.Nursery, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(map_notices, "MAX_QUEUED", 2)
    bus = FakeBus()
    notices = MapNotices(bus)
    nursery.start_soon(notices.run)
    dropped = "map notices dropped: Redis is not taking them fast enough"
    with caplog.at_level(logging.WARNING, logger=map_notices.__name__):
        for overflow in range(2):
            bus.held = trio.Event()
            notices.closed(f"held-{overflow}")
            await bus.wait_until(calls=len(bus.published) + 1)  # the sender waits on Redis
            for k in range(4):
                notices.closed(f"queued-{overflow}-{k}")
            assert [r.message for r in caplog.records] == [dropped] * (overflow + 1)
            bus.held.set()
            await bus.wait_until(published=3 * (overflow + 1))
    assert [event_id for _, event_id in bus.said()] == [
        "held-0", "queued-0-0", "queued-0-1", "held-1", "queued-1-0", "queued-1-1"]
