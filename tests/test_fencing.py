"""Fencing in the live room: an actor whose event another node has claimed stops writing, and its
room ends without a restart, its sockets closed with 1012 (reconnect: served elsewhere).

Everything runs on a MemoryStore and trio's virtual clock (`autojump_clock`); members are
RecordingOutboxes (tests/helpers/fakes.py). "Another node" is a `claim_event` with a newer epoch
made on the store behind the actor's back. The store's side of fencing is
tests/test_store_contract.py.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import outcome
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from tests.helpers.fakes import RecordingOutbox
from vpiska.actors import CloseCode, EventSupervisor, Member, Room
from vpiska.actors.commands import (
    AddMedia,
    Chat,
    Close,
    Command,
    Join,
    RemoveMedia,
    Reply,
    Snapshot,
    Update,
)
from vpiska.actors.event import EventActor
from vpiska.actors.geo import MapIndex
from vpiska.config import Config
from vpiska.domain import Coordinates, Event, EventMedia, Identity, new_id, utc_now
from vpiska.errors import DomainError, ErrorCode, RoomMoved
from vpiska.store import MemoryStore, StaleEpoch, Store

NODE_EPOCH = 1  # this node's lease on the event
NEWER_EPOCH = 2  # another node's, after this one was paused past its lease
EVERYWHERE = (-1e9, 1e9, -1e9, 1e9)  # a map rectangle (x low, x high, y low, y high)

_ACTOR_WRITES = frozenset(
    {"append_chat", "update_event", "close_event", "add_event_media", "remove_event_media"})


class LeasedStore:
    """The store as a cluster node's actors will write to it: every write of an event's actor
    carries the node's lease epoch. Today's supervisor runs its actors unfenced (epoch None);
    this fake lets it be tested with the epoch the cluster code will pass."""

    def __init__(self, inner: MemoryStore, epoch: int) -> None:
        self._inner = inner
        self._epoch = epoch

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name not in _ACTOR_WRITES:
            return attribute

        async def write(*args: Any, epoch: int | None = None, **kwargs: Any) -> Any:
            assert epoch is None, "the supervisor's actors are unfenced today"
            return await attribute(*args, epoch=self._epoch, **kwargs)

        return write


def person(name: str) -> Identity:
    return Identity(new_id(), name, "")


async def join(room: Room, name: str) -> RecordingOutbox:
    outbox = RecordingOutbox()
    await room.ask(lambda reply: Join(Member(person(name), outbox), reply))
    return outbox


def chat_of(outbox: RecordingOutbox) -> list[str]:
    return [frame for frame in outbox.frames if frame.startswith("chatMessage/")]


@dataclasses.dataclass
class Node:
    """An EventSupervisor serving one event claimed at NODE_EPOCH, with two members in it."""

    supervisor: EventSupervisor
    memory: MemoryStore
    event: Event
    room: Room
    members: list[RecordingOutbox]


async def start_node(nursery: trio.Nursery, store: Store, memory: MemoryStore) -> Node:
    supervisor = EventSupervisor(store, Config())
    await nursery.start(supervisor.run)
    event = await supervisor.open_event(new_id(), "party", "street 1", Coordinates(1.0, 2.0))
    # This node's activation.
    assert await memory.claim_event(event.id, NODE_EPOCH, "node-a") == event
    room = supervisor.room(event.id)
    assert room is not None
    members = [await join(room, "ann"), await join(room, "bob")]
    await room.send(Chat(person("ann"), "before"))
    await trio.testing.wait_all_tasks_blocked()
    assert all(len(chat_of(member)) == 1 for member in members)
    assert [spot.event_id for spot in supervisor.in_range(*EVERYWHERE)] == [event.id]
    return Node(supervisor, memory, event, room, members)


@pytest.fixture
async def node(nursery: trio.Nursery) -> Node:
    memory = MemoryStore()
    return await start_node(nursery, cast(Store, LeasedStore(memory, NODE_EPOCH)), memory)


async def assert_fenced(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    """The room has ended as fenced: 1012, InternalError, no restart, the store untouched."""
    assert [member.close_code for member in node.members] == [CloseCode.SERVICE_RESTART] * 2
    assert all(len(chat_of(member)) == 1 for member in node.members)  # nothing after "before"
    assert node.supervisor.restarts == 0
    assert node.room.failed
    assert node.supervisor.in_range(*EVERYWHERE) == []  # off the map
    with pytest.raises(DomainError) as refused:
        await node.room.ask(Snapshot)
    assert refused.value.codes == (ErrorCode.INTERNAL_ERROR,)
    with pytest.raises(DomainError):  # a socket joining now is refused, not left hanging
        await join(node.room, "carol")
    assert [line.message for line in await node.memory.chat(node.event.id)] == ["before"]
    assert await node.memory.event(node.event.id) == node.event
    records = [r for r in caplog.records if r.name == "vpiska.actors.supervisor"]
    [fenced] = [r for r in records if r.message.startswith("event room fenced")]
    assert fenced.levelno == logging.WARNING
    # The ignores: logging's `extra=` fields, which LogRecord's type does not declare.
    assert fenced.event_id == node.event.id  # type: ignore[attr-defined]
    assert f"epoch {NEWER_EPOCH}" in fenced.cause  # type: ignore[attr-defined]
    assert not [r for r in records if r.levelno >= logging.ERROR or "restart" in r.message]


async def test_a_chat_line_after_a_newer_claim_ends_the_room_with_1012(
    node: Node, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    await node.memory.claim_event(node.event.id, NEWER_EPOCH, "node-b")
    with caplog.at_level(logging.WARNING):
        await node.room.send(Chat(person("ann"), "after"))
        await trio.testing.wait_all_tasks_blocked()
        await assert_fenced(node, caplog)


async def test_an_update_after_a_newer_claim_ends_the_room_with_1012(
    node: Node, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    await node.memory.claim_event(node.event.id, NEWER_EPOCH, "node-b")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(DomainError) as refused:
            await node.room.ask(
                lambda reply: Update(node.event.owner_id, "Moved 2", Coordinates(3, 4), reply))
        assert refused.value.codes == (ErrorCode.INTERNAL_ERROR,)
        await trio.testing.wait_all_tasks_blocked()
        await assert_fenced(node, caplog)


async def test_commands_queued_behind_the_fenced_write_are_refused_as_moved(
    node: Node, autojump_clock: MockClock,
) -> None:
    """They were never handled, so their callers may ask the event's new owner (RoomMoved);
    one that reaches a client anyway is the InternalError it was."""
    await node.memory.claim_event(node.event.id, NEWER_EPOCH, "node-b")
    answers: list[outcome.Outcome[object]] = []

    async def snapshot() -> None:
        answers.append(await outcome.acapture(node.room.ask, Snapshot))

    async with trio.open_nursery() as nursery:
        await node.room.send(Chat(person("ann"), "after"))  # queued first: the actor is idle
        for _ in range(3):
            nursery.start_soon(snapshot)
    assert len(answers) == 3
    for answer in answers:
        assert isinstance(answer, outcome.Error)
        assert isinstance(answer.error, RoomMoved)
        assert answer.error.codes == (ErrorCode.INTERNAL_ERROR,)
    assert node.supervisor.restarts == 0


async def test_without_a_lease_the_room_ignores_claims(
    nursery: trio.Nursery, autojump_clock: MockClock,
) -> None:
    """One node without Redis: actors are unfenced, whatever epoch the store holds."""
    memory = MemoryStore()
    node = await start_node(nursery, memory, memory)
    await memory.claim_event(node.event.id, NEWER_EPOCH, "node-b")
    await node.room.send(Chat(person("ann"), "after"))
    await node.room.ask(
        lambda reply: Update(node.event.owner_id, "Moved 2", Coordinates(3, 4), reply))
    await trio.testing.wait_all_tasks_blocked()
    assert all(len(chat_of(member)) == 2 for member in node.members)
    assert [member.close_code for member in node.members] == [None, None]
    assert [line.message for line in await memory.chat(node.event.id)] == ["before", "after"]
    moved = await memory.event(node.event.id)
    assert moved is not None
    assert moved.address == "Moved 2"


# The actor alone: it writes with its own epoch.


async def run_actor(nursery: trio.Nursery, memory: MemoryStore, epoch: int | None,
                    ) -> tuple[Event, Room, Callable[[], Awaitable[outcome.Outcome[object]]]]:
    """An EventActor at `epoch` on an event claimed at NODE_EPOCH; returns a way to await how
    its `run` ended."""
    event = Event(new_id(), new_id(), "party", "street 1", Coordinates(1.0, 2.0), utc_now())
    await memory.add_event(event)
    await memory.claim_event(event.id, NODE_EPOCH, "node-a")
    room = Room(event.id, event.owner_id, inbox_size=16, reply_timeout=10)
    index = MapIndex()
    index.put(event.id, event.name, event.coordinates)
    actor = EventActor(room, event, 0, memory, index, Config(), epoch=epoch)
    ended = trio.Event()
    result: list[outcome.Outcome[object]] = []

    async def run() -> None:
        result.append(await outcome.acapture(actor.run))
        ended.set()

    nursery.start_soon(run)

    async def wait() -> outcome.Outcome[object]:
        with trio.fail_after(60):  # virtual time: costs nothing, fails a run that never ends
            await ended.wait()
        return result[0]

    return event, room, wait


async def test_the_actor_writes_with_its_epoch(
    nursery: trio.Nursery, autojump_clock: MockClock,
) -> None:
    memory = MemoryStore()
    event, room, _ = await run_actor(nursery, memory, NODE_EPOCH)
    media = EventMedia(new_id(), "image/png")
    await room.send(Chat(person("ann"), "line"))
    await room.ask(lambda reply: Update(event.owner_id, "Moved 2", Coordinates(3, 4), reply))
    await room.ask(lambda reply: AddMedia(event.owner_id, media, reply))
    await room.ask(lambda reply: RemoveMedia(event.owner_id, media.id, reply))
    await room.ask(lambda reply: Close(event.owner_id, reply))
    assert await memory.event(event.id) == dataclasses.replace(
        event, address="Moved 2", coordinates=Coordinates(3.0, 4.0), is_open=False)
    assert [line.message for line in await memory.chat(event.id)] == ["line"]


@pytest.mark.parametrize("write", ["chat", "update", "add_media", "remove_media", "close"])
async def test_after_a_newer_claim_any_write_ends_the_actor_and_changes_nothing(
    nursery: trio.Nursery, autojump_clock: MockClock, write: str,
) -> None:
    memory = MemoryStore()
    event, room, ended = await run_actor(nursery, memory, NODE_EPOCH)
    attached = EventMedia(new_id(), "image/png")
    await room.ask(lambda reply: AddMedia(event.owner_id, attached, reply))
    event = dataclasses.replace(event, media=(attached,))
    member = await join(room, "ann")
    member.take()
    await memory.claim_event(event.id, NEWER_EPOCH, "node-b")

    owner = event.owner_id
    requests: dict[str, Callable[[Reply], Command]] = {
        "update": lambda reply: Update(owner, "Moved 2", Coordinates(3, 4), reply),
        "add_media": lambda reply: AddMedia(owner, EventMedia(new_id(), "a/b"), reply),
        "remove_media": lambda reply: RemoveMedia(owner, attached.id, reply),
        "close": lambda reply: Close(owner, reply),
    }
    if write == "chat":
        await room.send(Chat(person("ann"), "after"))
    else:
        with pytest.raises(DomainError) as refused:  # the actor raised while handling it
            await room.ask(requests[write])
        assert refused.value.codes == (ErrorCode.INTERNAL_ERROR,)
    result = await ended()
    assert isinstance(result, outcome.Error)
    assert isinstance(result.error, StaleEpoch)
    assert (result.error.epoch, result.error.claimed) == (NODE_EPOCH, NEWER_EPOCH)
    assert await memory.event(event.id) == event
    assert await memory.chat(event.id) == []
    assert member.frames == []  # nothing refused was announced
    assert member.close_code is None  # closing the sockets is the supervisor's decision
