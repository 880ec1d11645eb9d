"""The live room without sockets, for actor tests on virtual time: an EventSupervisor on a
FaultyStore around a MemoryStore, and members that are RecordingOutboxes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest
import trio

from tests.helpers.fakes import FaultyStore, RecordingOutbox
from vpiska.actors import EventSupervisor, EventView, Member, Room
from vpiska.actors.commands import Command, Join, Joined, Reply, Snapshot
from vpiska.config import Config
from vpiska.domain import ChatMessage, Coordinates, Event, Identity, new_id
from vpiska.errors import DomainError, ErrorCode
from vpiska.store import MemoryStore, Store

INTERVAL = Config().event_update_interval_ms / 1000  # seconds between count announcements


@dataclasses.dataclass
class Rooms:
    """A running EventSupervisor, the FaultyStore it runs on and the MemoryStore behind that."""

    supervisor: EventSupervisor
    store: FaultyStore
    memory: MemoryStore
    config: Config
    ended: trio.Event  # set once `supervisor.run` has returned

    async def open(self) -> tuple[Event, Room]:
        """Open an event of a new owner, as events/create does."""
        event = await self.supervisor.open_event(
            new_id(), "party", "street 1", Coordinates(1.0, 2.0))
        room = self.supervisor.room(event.id)
        assert room is not None
        return event, room

    async def stored_chat(self, event_id: str) -> list[str]:
        return [line.message for line in await self.memory.chat(event_id)]

    async def stored_event(self, event_id: str) -> Event:
        stored = await self.memory.event(event_id)
        assert stored is not None
        return stored

    def crash_on(self, poison: str) -> None:
        """Make a chat write that holds `poison` fail, as a lost database would."""
        def poisoned(event_id: str, first_seq: int, lines: Sequence[ChatMessage]) -> bool:
            return any(poison in line.message for line in lines)

        self.store.fail("append_chat", poisoned)


async def start_rooms(nursery: trio.Nursery, **overrides: Any) -> Rooms:
    memory = MemoryStore()
    store = FaultyStore(memory)
    config = Config(**overrides)
    # FaultyStore is a Store by delegation (__getattr__), which a Protocol check cannot see.
    supervisor = EventSupervisor(cast(Store, store), config)
    ended = trio.Event()

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await supervisor.run(task_status=task_status)
        ended.set()

    await nursery.start(run)
    return Rooms(supervisor, store, memory, config, ended)


def person(name: str = "ann") -> Identity:
    return Identity(new_id(), name, "")


async def join(room: Room, who: Identity | str = "ann",
               outbox: RecordingOutbox | None = None) -> Member:
    identity = person(who) if isinstance(who, str) else who
    member = Member(identity, RecordingOutbox() if outbox is None else outbox)
    joined = await room.ask(lambda reply: Join(member, reply))
    assert isinstance(joined, Joined)
    return member


async def snapshot(room: Room) -> EventView:
    view = await room.ask(Snapshot)
    assert isinstance(view, EventView)
    return view


async def refusal(room: Room, make: Callable[[Reply], Command]) -> tuple[ErrorCode, ...]:
    """The codes of the DomainError that `room.ask(make)` answers with."""
    with pytest.raises(DomainError) as refused:
        await room.ask(make)
    return refused.value.codes


def outbox(member: Member) -> RecordingOutbox:
    assert isinstance(member.outbox, RecordingOutbox)
    return member.outbox
