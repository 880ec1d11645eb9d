"""A node leaving the cluster hands its rooms over: no line a room took in is lost on the way.

Cluster nodes run in the test's own process, on a Redis of the test's own and one MemoryStore,
each node writing through a `GatedStore` whose chat writes the test can hold open: the
moment a hand-over is still writing is one the test chooses, on a loaded machine as on an
idle one. Lines "from another node" are notices as a gateway sends them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, cast

import pytest
import trio
import trio.testing

from tests.helpers.cluster_fixtures import RedisServer
from vpiska.actors import EventSupervisor
from vpiska.actors.commands import Update
from vpiska.actors.geo import MapIndex
from vpiska.actors.rooms import ask_where_it_runs
from vpiska.cluster import protocol, redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.gateway import GatewayRoom
from vpiska.cluster.leases import Leases
from vpiska.cluster.map_notices import MapNotices
from vpiska.cluster.node import ClusterNode
from vpiska.cluster.protocol import Notice, Request, encode
from vpiska.config import Config
from vpiska.domain import ChatMessage, Coordinates, Event, new_id
from vpiska.store import MemoryStore, Store

TTL = 60.0  # long: no lease lapses, and no beat comes, while the test holds a write open
WAIT_SECONDS = 10


class GatedStore:
    """A node's store: the shared MemoryStore, with chat writes that wait at a gate while the
    test holds it (`hold`), one write let through at a time (`let_one_through`)."""

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner
        self._gate: trio.Event | None = None
        self.claims: trio.Event | None = None  # while not None, claims wait until it is set
        self.claiming = trio.Event()  # a claim waits
        self.waiting = trio.Event()  # a chat write waits at the gate
        self.lines: list[str] = []  # the chat lines this node wrote
        self._wrote = trio.Event()

    def hold(self) -> None:
        self._gate, self.waiting = trio.Event(), trio.Event()

    def let_one_through(self) -> None:
        """The write at the gate goes on; the next one waits again."""
        assert self._gate is not None
        gate = self._gate
        self.hold()
        gate.set()

    def open(self) -> None:
        assert self._gate is not None
        gate, self._gate = self._gate, None
        gate.set()

    async def append_chat(self, event_id: str, first_seq: int, lines: Sequence[ChatMessage],
                          *, epoch: int | None = None) -> None:
        gate = self._gate
        if gate is not None:
            self.waiting.set()
            await gate.wait()
        await self._inner.append_chat(event_id, first_seq, lines, epoch=epoch)
        self.lines += [line.message for line in lines]
        self._wrote.set()
        self._wrote = trio.Event()

    async def claim_event(self, event_id: str, epoch: int, claimant: str) -> Event | None:
        if self.claims is not None:
            self.claiming.set()
            await self.claims.wait()
        return await self._inner.claim_event(event_id, epoch, claimant)

    async def wrote(self, line: str) -> None:
        while line not in self.lines:
            await self._wrote.wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ToldSupervisor(EventSupervisor):
    """Says when every room has been told to stop: what a leaving node goes on from."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.told = trio.Event()

    async def stop(self, *, hand_over: bool = False) -> None:
        await super().stop(hand_over=hand_over)
        self.told.set()


@dataclasses.dataclass
class Node:
    node: ClusterNode
    supervisor: ToldSupervisor
    store: GatedStore
    client: Any
    left: trio.Event = dataclasses.field(default_factory=trio.Event)

    async def leave(self) -> None:
        await self.node.leave()
        self.left.set()

    def hears(self, event_id: str, text: str) -> None:
        """A chat line from a socket on another node, as the bus hands the node its
        messages."""
        self.node.routing.node_message(encode(Notice(protocol.Chat(new_id(), "bob", "", text),
                                                     event_id)))


StartNode = Callable[[], Awaitable[Node]]


@pytest.fixture
async def memory() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def start_node(redis_server: RedisServer, memory: MemoryStore
                     ) -> AsyncIterator[StartNode]:
    """`await start_node()`: one more node of the cluster; all stop when the test ends."""
    config = dataclasses.replace(Config(), redis_url=redis_server.url, lease_ttl_seconds=TTL)
    async with trio.open_nursery() as nursery:

        async def run_node(*, task_status: trio.TaskStatus[Node]) -> None:
            store = GatedStore(memory)
            async with redis.connect(redis_server.url) as client:
                bus, index = Bus(redis_server.url, client), MapIndex()
                map_notices = MapNotices(bus)
                supervisor = ToldSupervisor(cast(Store, store), config, serve_all=False,
                                            index=index, map_publisher=map_notices)
                node = ClusterNode(config, cast(Store, store), supervisor, client, bus, index,
                                   map_notices)
                async with trio.open_nursery() as own:
                    await own.start(node.run)
                    await own.start(supervisor.run)
                    task_status.started(Node(node, supervisor, store, client))
                    await trio.sleep_forever()

        async def start() -> Node:
            node: Node = await nursery.start(run_node)
            return node

        yield start
        nursery.cancel_scope.cancel()


async def open_event(node: Node) -> Event:
    event = await node.supervisor.create_event(new_id(), "party", "street 1",
                                               Coordinates(1.0, 2.0))
    assert await node.node.activate(event.id) is not None
    return event


async def leaving_while_writing(owner: Node, event: Event, line: str,
                                nursery: trio.Nursery) -> None:
    """Have `owner` write `line` (held in the store) and be told to leave meanwhile; return
    once its room's Stop is queued behind the line."""
    owner.store.hold()
    owner.hears(event.id, line)
    with trio.fail_after(WAIT_SECONDS):
        await owner.store.waiting.wait()  # the line is being written
    nursery.start_soon(owner.leave)
    with trio.fail_after(WAIT_SECONDS):
        await owner.supervisor.told.wait()


async def test_a_leaving_owner_keeps_the_lease_until_its_room_has_written_what_it_took(
    start_node: StartNode, memory: MemoryStore, nursery: trio.Nursery
) -> None:
    """A chat line from a socket on another node is being written when the owner is told to
    leave: the next owner cannot take the event until that write is done, and the line is
    stored. (Releasing the lease first let the next owner claim the event, and the store
    refused the old room's write as fenced: the line was lost.) "The next owner" is the
    test, as the node designated next would act: it takes the lease as soon as it is free
    and claims the event's epoch in the store."""
    owner = await start_node()
    event = await open_event(owner)
    await leaving_while_writing(owner, event, "said on another node", nursery)
    with trio.fail_after(WAIT_SECONDS):
        # The leaving node does whatever it does next until it waits on something.
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    next_owner = Leases(owner.client, "the-next-node", TTL)
    early = await next_owner.acquire(event.id)
    if early is not None:  # from now on the old epoch writes nothing
        await memory.claim_event(event.id, early.epoch, "the-next-node")
    owner.store.open()
    with trio.fail_after(WAIT_SECONDS):
        await owner.left.wait()
    assert [line.message for line in await memory.chat(event.id)] == ["said on another node"]
    assert early is None, "the lease was free while the leaving room still wrote a line"
    assert await next_owner.acquire(event.id) is not None  # released once it was written


async def test_a_line_that_comes_while_the_room_hands_over_is_stored_by_the_next_owner(
    start_node: StartNode, memory: MemoryStore, nursery: trio.Nursery
) -> None:
    """Lines queued behind the Stop are the leaving room's to write; one that comes after the
    room took its Stop is not (the room would write for as long as sockets talk): the
    leaving node sends it on, once its lease is released, to the node that owns the event
    next, which stores it."""
    owner = await start_node()
    successor = await start_node()
    event = await open_event(owner)
    await leaving_while_writing(owner, event, "one", nursery)
    owner.hears(event.id, "two")  # queued behind the Stop
    owner.store.let_one_through()
    with trio.fail_after(WAIT_SECONDS):
        await owner.store.waiting.wait()  # the room took its Stop, and writes "two"
    owner.hears(event.id, "three")
    owner.store.open()
    with trio.fail_after(WAIT_SECONDS):
        await owner.left.wait()
        await successor.store.wrote("three")
    assert owner.store.lines == ["one", "two"]
    assert [line.message for line in await memory.chat(event.id)] == ["one", "two", "three"]


def start_update(nursery: trio.Nursery, ask: Callable[[Callable[[Any], Any]], Awaitable[object]],
                 event: Event) -> trio.Event:
    """Ask, through `ask`, for `event` to move to "street 2"; the event is set once answered."""
    updated = trio.Event()

    async def update() -> None:
        await ask(lambda reply: Update(event.owner_id, "street 2", Coordinates(3.0, 4.0), reply))
        updated.set()

    nursery.start_soon(update)
    return updated


async def assert_moved(memory: MemoryStore, event: Event) -> None:
    stored = await memory.event(event.id)
    assert stored is not None
    assert stored.address == "street 2"


async def test_a_request_that_comes_while_the_room_hands_over_is_answered_by_the_next_owner(
    start_node: StartNode, memory: MemoryStore, nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request from another node's gateway that reaches the room once it took its Stop is
    not queued behind it to be refused as the room ends: the leaving node answers that it is
    not the owner, and the gateway asks again until the next owner answers."""
    owner = await start_node()
    successor = await start_node()
    event = await open_event(owner)
    await leaving_while_writing(owner, event, "one", nursery)
    owner.hears(event.id, "two")
    owner.store.let_one_through()
    with trio.fail_after(WAIT_SECONDS):
        await owner.store.waiting.wait()  # the room took its Stop, and writes "two"
    asked = trio.Event()
    answer = owner.node.owner_link.answer

    async def answer_and_tell(request: Request) -> None:
        if isinstance(request.op, protocol.Update):
            asked.set()
        await answer(request)

    monkeypatch.setattr(owner.node.owner_link, "answer", answer_and_tell)
    gateway = await successor.node.find(event.id)
    assert isinstance(gateway, GatewayRoom)
    updated = start_update(nursery, gateway.ask, event)
    with trio.fail_after(WAIT_SECONDS):
        await asked.wait()  # it reached the leaving room
    owner.store.open()
    with trio.fail_after(WAIT_SECONDS):
        await updated.wait()
    await assert_moved(memory, event)


def tell_when_queued(room: Any, monkeypatch: pytest.MonkeyPatch) -> trio.Event:
    """An event set once a command asked of `room` is in its inbox: Room.ask queues the
    command it makes in the same step, without a checkpoint between."""
    queued = trio.Event()
    ask = room.ask

    async def ask_and_tell(make: Callable[[Any], Any]) -> object:
        def made(reply: Any) -> Any:
            command = make(reply)
            queued.set()
            return command

        return await ask(made)

    monkeypatch.setattr(room, "ask", ask_and_tell)
    return queued


async def test_a_request_queued_behind_the_stop_is_answered_by_the_next_owner(
    start_node: StartNode, memory: MemoryStore, nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request from another node's gateway that reached the room before it took its Stop
    is queued behind it, and refused as the room ends here: the leaving node tells the
    gateway it is not the owner (it told InternalError, which the client saw), and the
    gateway asks the next owner."""
    owner = await start_node()
    successor = await start_node()
    event = await open_event(owner)
    await leaving_while_writing(owner, event, "one", nursery)
    room = owner.supervisor.room(event.id)
    assert room is not None
    assert not room.handing_over
    queued = tell_when_queued(room, monkeypatch)
    gateway = await successor.node.find(event.id)
    assert isinstance(gateway, GatewayRoom)
    updated = start_update(nursery, gateway.ask, event)
    with trio.fail_after(WAIT_SECONDS):
        await queued.wait()  # behind the Stop
    owner.store.open()
    with trio.fail_after(WAIT_SECONDS):
        await updated.wait()
    await assert_moved(memory, event)
    assert successor.supervisor.room(event.id) is not None


async def test_a_request_to_the_leaving_node_itself_is_answered_by_the_next_owner(
    start_node: StartNode, memory: MemoryStore, nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTP request on the leaving node, queued behind its room's Stop: the room refuses
    it as moved, and the request is asked again where the event runs now."""
    owner = await start_node()
    successor = await start_node()
    event = await open_event(owner)
    await leaving_while_writing(owner, event, "one", nursery)
    room = await owner.node.find(event.id)
    assert room is not None
    assert room is owner.supervisor.room(event.id)
    queued = tell_when_queued(room, monkeypatch)
    updated = start_update(nursery, partial(ask_where_it_runs, owner.node, room), event)
    with trio.fail_after(WAIT_SECONDS):
        await queued.wait()
    owner.store.open()
    with trio.fail_after(WAIT_SECONDS):
        await updated.wait()
    await assert_moved(memory, event)
    assert successor.supervisor.room(event.id) is not None


async def test_a_room_claimed_while_the_node_is_told_to_leave_is_not_started(
    start_node: StartNode, nursery: trio.Nursery
) -> None:
    """An activation under way when the node is told to leave (its claim in the store not
    answered yet) starts no room, and lets the lease go: a room started after the others
    were told to stop would never be told, and the node would wait for it until its
    shutdown's grace ran out."""
    node = await start_node()
    event = await node.supervisor.create_event(new_id(), "party", "street 1",
                                               Coordinates(1.0, 2.0))
    node.store.claims = trio.Event()
    activated: list[object] = []
    done = trio.Event()

    async def activate() -> None:
        activated.append(await node.node.activate(event.id))
        done.set()

    nursery.start_soon(activate)
    with trio.fail_after(WAIT_SECONDS):
        await node.store.claiming.wait()
    nursery.start_soon(node.leave)
    with trio.fail_after(WAIT_SECONDS):
        await node.supervisor.told.wait()
    node.store.claims.set()
    with trio.fail_after(WAIT_SECONDS):
        await node.left.wait()
        await done.wait()
    assert activated == [None]
    assert node.supervisor.room(event.id) is None
    assert await Leases(node.client, "the-next-node", TTL).acquire(event.id) is not None
