"""`Follower`s: clients that behave as the API asks a client to, staying in the room whatever
happens to their node — when a socket closes they rejoin through a node that is alive, with
`since=` the chat lines they have — and the chat load they keep up (`talking`). What must hold
for them (`settle_and_check`): every line any of them saw is stored, and each saw the store's
chat in its order with nothing missing and nothing twice."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import trio

from tests.helpers.clients import Crowd, Member, host_event, token_for
from tests.helpers.cluster_fixtures import Cluster, Node, RedisServer
from tests.helpers.cluster_state import TTL, owner_now
from tests.helpers.server import Server


@dataclasses.dataclass(eq=False)
class Follower:
    """A client in the room; its `lines` are every chat line it was shown, across sockets."""

    name: str
    token: str
    event_id: str
    servers: list[Server]
    home: int  # the node it joins first
    lines: list[str] = dataclasses.field(default_factory=list)
    closes: list[int | None] = dataclasses.field(default_factory=list)
    seen_at: dict[str, float] = dataclasses.field(default_factory=dict)
    member: Member | None = None  # its socket now, if it has one
    node: int = -1  # the node of that socket
    stop: bool = False
    _changed: trio.Event = dataclasses.field(default_factory=trio.Event)
    _crowd: Crowd | None = None

    async def run(self, nursery: trio.Nursery, alive: list[bool]) -> None:
        """Stay in the room until `stop`: rejoin through the next live node after a close."""
        nodes = itertools.islice(itertools.cycle(range(len(self.servers))), self.home, None)
        for index in nodes:
            if self.stop:
                return
            if not alive[index]:
                continue
            crowd = self._crowd = Crowd(nursery, self.servers[index])
            try:
                member = await crowd.join(self.token, self.event_id, since=len(self.lines))
            except Exception:  # that node is going down (or cannot serve yet): the next one
                await crowd.aclose()
                await trio.sleep(0.1)  # as a client backs off, not a wait for anything
                continue
            self.member, self.node = member, index
            await self._follow(member)
            self.member = None
            await crowd.aclose()
            if self.stop:
                return
            self.closes.append(member.close_code)

    async def _follow(self, member: Member) -> None:
        seen = 0
        while True:
            chat = member.chat()
            for line in chat[seen:]:
                self.lines.append(line)
                self.seen_at.setdefault(line, trio.current_time())
            seen = len(chat)
            self._changed.set()
            self._changed = trio.Event()
            if member.closed.is_set() or self.stop:
                return
            await member.next_change()

    async def aclose(self) -> None:
        """Leave the room for good (its `run` then returns)."""
        self.stop = True
        if self._crowd is not None:
            await self._crowd.aclose()

    async def wait_for(self, count: int) -> None:
        """Wait until it has `count` lines (within 30 s)."""
        with trio.fail_after(30):
            while len(self.lines) < count:
                await self._changed.wait()

    async def wait_for_lines(self, lines: set[str]) -> None:
        """Wait until it has seen every one of `lines` (within 30 s)."""
        with trio.fail_after(30):
            while not lines <= set(self.lines):
                await self._changed.wait()


async def stored_chat(server: Server, event_id: str) -> list[str]:
    return [line.message for line in await server.store.chat(event_id)]


@asynccontextmanager
async def talking(followers: list[Follower], servers: list[Server], alive: list[bool]
                  ) -> AsyncIterator[dict[str, float]]:
    """Each follower says a line every 20 ms (through its own socket, whichever node);
    yields when each line was sent. The talk is over once each connected follower's last
    line, said after the others, has been seen by every follower or its socket has closed
    (lines it held are gone with it): a socket's lines reach the event in order, so by then
    each line said before it is stored or was dropped. (Lines wait in a socket while its
    gateway looks for a new owner, and are sent on after it, one by one.)"""
    sent: dict[str, float] = {}
    quiet = False

    async def talk(follower: Follower) -> None:
        for k in itertools.count():
            if quiet:
                return
            member = follower.member
            if member is not None and not member.closed.is_set():
                line = f"{follower.name}-{k}"
                try:
                    await member.say(line)
                    sent[line] = trio.current_time()
                except Exception:  # the socket closed under us; the follower rejoins
                    pass
            await trio.sleep(0.02)  # the pace of the load, not a wait for anything

    async with trio.open_nursery() as nursery:
        for follower in followers:
            nursery.start_soon(talk, follower)
        yield sent
        quiet = True
    last_lines: dict[str, Member] = {}
    for follower in followers:
        member = follower.member
        if member is not None and not member.closed.is_set():
            line = f"{follower.name}-last"
            try:
                await member.say(line)
            except Exception:  # the socket closed under us: its unsent lines went with it
                continue
            sent[line] = trio.current_time()
            last_lines[line] = member

    async def seen_or_closed(line: str, member: Member) -> None:
        async def seen(done: trio.CancelScope) -> None:
            for follower in followers:
                await follower.wait_for_lines({line})
            done.cancel()

        async with trio.open_nursery() as waiting:
            waiting.start_soon(seen, waiting.cancel_scope)
            await member.closed.wait()
            waiting.cancel_scope.cancel()

    async with trio.open_nursery() as draining:
        for line, member in last_lines.items():
            draining.start_soon(seen_or_closed, line, member)


def assert_consistent(followers: list[Follower], stored: list[str]) -> None:
    """Every line seen is stored; each follower saw the stored chat in order, no gap, no
    duplicate (it joined at line 0)."""
    assert len(stored) == len(set(stored)), "a line was stored twice"
    for follower in followers:
        assert follower.lines == stored[: len(follower.lines)], follower.name


_follower_numbers = itertools.count()


async def start_followers(nursery: trio.Nursery, servers: list[Server], event_id: str,
                          per_node: int, alive: list[bool]) -> list[Follower]:
    followers = []
    for index, server in enumerate(servers):
        for _ in range(per_node):
            name = f"n{index}f{next(_follower_numbers)}"
            _, token = await token_for(server, name)
            follower = Follower(name, token, event_id, servers, index)
            nursery.start_soon(follower.run, nursery, alive)
            followers.append(follower)
    return followers


async def settle(followers: list[Follower], servers: list[Server], event_id: str) -> list[str]:
    """Once the talk has stopped: wait until every follower has every stored line, and the
    store has no line more (lines in flight when the talk stopped land first); those."""
    stored = await stored_chat(servers[0], event_id)
    while True:
        for follower in followers:
            try:
                await follower.wait_for(len(stored))
            except trio.TooSlowError:
                raise AssertionError(f"stored {len(stored)}; " + "; ".join(
                    f"{f.name}: {len(f.lines)} lines, closes {f.closes}, "
                    f"{'on' if f.member else 'off'} node {f.node}" for f in followers)) from None
        again = await stored_chat(servers[0], event_id)
        if again == stored:
            return stored  # (a follower with more lines than the store is what the test finds)
        stored = again


async def settle_and_check(followers: list[Follower], servers: list[Server], event_id: str
                           ) -> list[str]:
    """Once the talk has stopped: settle, the followers leave, and what each saw is checked
    against the store (assert_consistent); the stored lines."""
    stored = await settle(followers, servers, event_id)
    for follower in followers:
        await follower.aclose()
    assert_consistent(followers, stored)
    return stored


class FollowedRoom(NamedTuple):
    """An event of a cluster's first node, two followers on every node, and its owner."""

    servers: list[Server]
    event_id: str
    alive: list[bool]  # whether each node is up, as `talking` reads it
    followers: list[Follower]
    owner: Node


async def followed_room(nursery: trio.Nursery, group: Cluster, redis_server: RedisServer
                        ) -> FollowedRoom:
    servers = [await group.server(node) for node in group.nodes]
    _, event_id = await host_event(servers[0])
    alive = [True] * len(servers)
    followers = await start_followers(nursery, servers, event_id, 2, alive)
    return FollowedRoom(servers, event_id, alive, followers,
                        await owner_now(redis_server, event_id, group))


async def kill_until_served_again(owner: Node, victim: int, followers: list[Follower],
                                  alive: list[bool], sent: dict[str, float]) -> float:
    """SIGKILL the owner (node `victim`); return, with the time of the kill, once a line sent
    after it has come back to a follower on another node."""
    killed_at = trio.current_time()
    alive[victim] = False
    owner.sigkill()
    survivor = next(f for f in followers if f.home != victim)
    with trio.fail_after(TTL + 15):  # served again: a line sent after the kill comes back
        while not any(sent.get(line, -1.0) > killed_at for line in survivor.lines):
            await survivor.wait_for(len(survivor.lines) + 1)
    return killed_at
