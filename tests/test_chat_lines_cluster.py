"""Lines with an identity across nodes (API.md, "Opt-in room features"; issue 20): a v2
member on one node, the event's owner on another, over real sockets; and the owner SIGKILLed
while v2 members send acknowledged lines.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from typing import Any

import trio

from tests.helpers.clients import Crowd, Member, host_event, token_for
from tests.helpers.cluster_fixtures import Cluster, Node, RedisServer, StartCluster
from tests.helpers.cluster_state import UNLIMITED, diagnosed, owner_now
from tests.helpers.server import Server

# How long a client waits for an ack before it sends the line again, as a client would.
ACK_TIMEOUT = 2.0


def payloads(member: Member, prefix: str) -> list[Any]:
    return [json.loads(frame[len(prefix) + 1:]) for frame in member.frames
            if frame.startswith(prefix + "/")]


async def send(member: Member, client_id: str, text: str) -> None:
    await member.ws.send_message("chat/" + json.dumps({"id": client_id, "text": text}))


async def acked(member: Member, count: int) -> list[Any]:
    await member.wait_for(lambda m: len(payloads(m, "ack")) >= count, timeout=30)
    return payloads(member, "ack")


async def owned_elsewhere(group: Cluster, redis_server: RedisServer
                          ) -> tuple[list[Server], str, str, Server, Server]:
    """Servers, the host's token, an event, its owner's server and another node's server."""
    servers = [await group.server(node) for node in group.nodes]
    host, event_id = await host_event(servers[0])
    owner: Node = await owner_now(redis_server, event_id, group)
    here = servers[group.nodes.index(owner)]
    there = next(server for server in servers if server is not here)
    return servers, host, event_id, here, there


async def lines_across_nodes(group: Cluster, redis_server: RedisServer,
                             nursery: trio.Nursery) -> None:
    servers, host, event_id, at_owner, elsewhere = await owned_elsewhere(group, redis_server)
    crowds = {server.url: Crowd(nursery, server) for server in servers}
    try:
        await _lines_across_nodes(servers, host, event_id, crowds[at_owner.url], at_owner,
                                  crowds[elsewhere.url], elsewhere)
    finally:
        for crowd in crowds.values():
            await crowd.aclose()


async def _lines_across_nodes(servers: list[Server], host: str, event_id: str,
                              at_owner_crowd: Crowd, at_owner: Server, elsewhere_crowd: Crowd,
                              elsewhere: Server) -> None:
    _, token = await token_for(elsewhere)
    _, old_token = await token_for(at_owner)
    remote = await elsewhere_crowd.join(token, event_id, v=2)
    local = await at_owner_crowd.join(token, event_id, v=2)  # the same user
    old = await at_owner_crowd.join(old_token, event_id)
    await send(remote, "m-1", "hello")
    assert await acked(remote, 1) == [{"id": "m-1", "seq": 1}]
    await local.wait_for(lambda m: m.chat() == ["hello"])
    [line] = payloads(local, "chatMessage")
    assert (line["seq"], line["message"]) == (1, "hello")
    await old.wait_for(lambda m: m.chat() == ["hello"])
    assert "seq" not in payloads(old, "chatMessage")[0]
    # Resent from the same socket and from the user's socket on the owner's node: stored once.
    await send(remote, "m-1", "hello")
    await send(local, "m-1", "hello")
    assert await acked(remote, 2) == [{"id": "m-1", "seq": 1}] * 2
    assert await acked(local, 1) == [{"id": "m-1", "seq": 1}]
    await send(remote, "m-2", "again")
    assert (await acked(remote, 3))[-1] == {"id": "m-2", "seq": 2}
    assert [line.message for line in await elsewhere.store.chat(event_id)] == ["hello", "again"]
    # The history on any node; the host erases a line through a node that does not own it.
    for server in servers:
        page = await server.ok("/api/v1/events/chat", {"eventId": event_id, "limit": 1})
        assert [(m["seq"], m["message"]) for m in page["messages"]] == [(2, "again")]
        assert page["hasMore"] is True
    await elsewhere.ok("/api/v1/events/chat/remove", {"eventId": event_id, "seq": 1}, token=host)
    for member in (remote, local):
        await member.wait_for(lambda m: "chatRemoved/1" in m.frames, timeout=30)
    for server in servers:
        got = await server.ok("/api/v1/events/get", {"eventId": event_id})
        assert [line["message"] for line in got["chatMessages"]] == ["", "again"]
    assert await elsewhere.codes("/api/v1/events/chat/remove",
                                 {"eventId": event_id, "seq": 1}, token=token) == [
        "UserIsNotOwner"]
    # A v2 socket catching up on the node that does not own the event gets v2 lines.
    late = await elsewhere_crowd.join(token, event_id, v=2, since=0)
    await late.wait_for(lambda m: len(m.chat()) == 2)
    assert [(m["seq"], m["message"]) for m in payloads(late, "chatMessage")] == [
        (1, ""), (2, "again")]
    assert not [frame for frame in old.frames if frame.startswith(("ack/", "chatRemoved/"))]


async def test_a_v2_member_on_one_node_and_the_owner_on_another(
        cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery) -> None:
    group = await cluster(2, redis=redis_server)
    async with diagnosed(group):
        await lines_across_nodes(group, redis_server, nursery)


async def test_a_v2_member_and_the_owner_on_machines_sharing_only_mongodb_and_redis(
        machines: StartCluster, redis_server: RedisServer, nursery: trio.Nursery) -> None:
    group = await machines(2, redis=redis_server)
    async with diagnosed(group):
        await lines_across_nodes(group, redis_server, nursery)


@dataclasses.dataclass(eq=False)
class Sender:
    """A v2 client as API.md asks one to be: it sends each line with an id, sends again what
    was not acknowledged within ACK_TIMEOUT, and after a close rejoins through a live node with
    `since=` the lines it has, sending again everything not acknowledged."""

    name: str
    token: str
    event_id: str
    servers: list[Server]
    home: int
    lines: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # v2 lines shown
    sent: dict[str, float] = dataclasses.field(default_factory=dict)  # id -> last sent at
    acks: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # id -> seqs acked
    member: Member | None = None
    stop: bool = False
    joins: int = 0  # sockets this client opened (one more after each close)
    _changed: trio.Event = dataclasses.field(default_factory=trio.Event)
    _crowd: Crowd | None = None

    async def aclose(self) -> None:
        """Leave the room for good (its `run` then returns)."""
        self.stop = True
        if self._crowd is not None:
            await self._crowd.aclose()

    def unacked(self) -> list[str]:
        return [client_id for client_id in self.sent if client_id not in self.acks]

    async def run(self, nursery: trio.Nursery, alive: list[bool]) -> None:
        nodes = itertools.islice(itertools.cycle(range(len(self.servers))), self.home, None)
        for index in nodes:
            if self.stop:
                return
            if not alive[index]:
                continue
            crowd = self._crowd = Crowd(nursery, self.servers[index])
            try:
                member = await crowd.join(self.token, self.event_id, v=2,
                                          since=len(self.lines))
            except Exception:  # that node is going down (or cannot serve yet): the next one
                await crowd.aclose()
                await trio.sleep(0.1)  # as a client backs off, not a wait for anything
                continue
            self.member = member
            self.joins += 1
            self._notify()
            async with trio.open_nursery() as talk:
                talk.start_soon(self._resend_unacked, member)
                await self._follow(member)
                talk.cancel_scope.cancel()
            self.member = None
            await crowd.aclose()

    async def _follow(self, member: Member) -> None:
        read = 0
        while not (member.closed.is_set() or self.stop):
            for frame in member.frames[read:]:
                prefix, _, payload = frame.partition("/")
                if prefix == "chatMessage":
                    self.lines.append(json.loads(payload))
                elif prefix == "ack":
                    ack = json.loads(payload)
                    self.acks.setdefault(ack["id"], []).append(ack["seq"])
            read = len(member.frames)
            self._notify()
            await member.next_change()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, condition: Callable[[Sender], bool],
                    seconds: float = 30) -> None:  # noqa: ASYNC109 (a test's deadline)
        """Wait until `condition` of this client's state holds (its reader changes it)."""
        with trio.fail_after(seconds):
            while not condition(self):
                await self._changed.wait()

    async def _resend_unacked(self, member: Member) -> None:
        while True:
            for client_id in self.unacked():
                if trio.current_time() - self.sent[client_id] >= ACK_TIMEOUT or (
                        self.sent[client_id] < 0):
                    await self.say(member, client_id)
            await trio.sleep(0.1)  # the client's timer, not a wait for anything

    async def say(self, member: Member, client_id: str) -> None:
        self.sent[client_id] = trio.current_time()
        try:
            await send(member, client_id, client_id)
        except Exception:  # the socket closed under us: the line is sent again after rejoining
            self.sent[client_id] = -1.0

    async def send_again(self, client_id: str) -> list[int]:
        """Send an acknowledged line again, as a client whose ack was lost does; answer the
        seqs of both acks."""
        assert self.member is not None
        await self.say(self.member, client_id)
        await self.until(lambda s: len(s.acks[client_id]) == 2)
        return self.acks[client_id]

    async def talk(self, count: int) -> None:
        for k in range(count):
            client_id = f"{self.name}-{k}"
            self.sent[client_id] = -1.0  # not sent yet: the next socket sends it
            if self.member is not None and not self.member.closed.is_set():
                await self.say(self.member, client_id)
            await trio.sleep(0.02)  # the pace of the load, not a wait for anything



async def test_the_owner_killed_while_v2_members_send_every_id_is_stored_once_and_acked(
        cluster: StartCluster, redis_server: RedisServer, nursery: trio.Nursery) -> None:
    group = await cluster(3, redis=redis_server, **UNLIMITED)
    async with diagnosed(group):
        servers = [await group.server(node) for node in group.nodes]
        _, event_id = await host_event(servers[0])
        owner = await owner_now(redis_server, event_id, group)
        victim = group.nodes.index(owner)
        alive = [True] * len(servers)
        senders = []
        for index, server in enumerate(servers):
            for n in range(2):
                _, token = await token_for(server, f"s{index}{n}")
                sender = Sender(f"s{index}{n}", token, event_id, servers, index)
                nursery.start_soon(sender.run, nursery, alive)
                senders.append(sender)
        for sender in senders:
            await sender.until(lambda s: s.member is not None)
        async with trio.open_nursery() as talking:
            for sender in senders:
                talking.start_soon(sender.talk, 150)
            for sender in senders:
                await sender.until(lambda s: len(s.acks) >= 20)
            alive[victim] = False
            owner.sigkill()
        for sender in senders:  # lines sent again after ACK_TIMEOUT: acked in the end
            await sender.until(lambda s: not s.unacked(), 60)
        # A client whose ack the failover lost sends its line again: the new owner knows the id.
        for sender in senders:
            seqs = await sender.send_again(f"{sender.name}-0")
            assert seqs[0] == seqs[1], (sender.name, seqs)
        stored = await servers[(victim + 1) % 3].store.chat(event_id)
        # Every id ends with exactly one stored line, of its sender.
        by_id: dict[str, list[int]] = {}
        for index, line in enumerate(stored):
            assert line.client_id is not None
            by_id.setdefault(line.client_id, []).append(index + 1)
            assert line.user_name == line.client_id.rsplit("-", 1)[0]
        every_id = {client_id for sender in senders for client_id in sender.sent}
        assert set(by_id) == every_id
        assert all(len(seqs) == 1 for seqs in by_id.values()), {
            k: v for k, v in by_id.items() if len(v) > 1}
        # Every ack carries the stored seq: no ack for a line not stored, none for another.
        for sender in senders:
            for client_id, seqs in sender.acks.items():
                assert set(seqs) == set(by_id[client_id]), (client_id, seqs)
        # One order, seen by everyone: what each was shown is the store's chat, from line 1.
        for sender in senders:
            await sender.until(lambda s: len(s.lines) >= len(stored))
            shown = [(line["seq"], line["message"]) for line in sender.lines]
            assert shown == [(seq, line.message) for seq, line in enumerate(stored, start=1)], (
                sender.name)
        for sender in senders:
            await sender.aclose()
        # The failover was felt: the victim's clients lost their socket and joined elsewhere.
        assert all(sender.joins > 1 for sender in senders if sender.home == victim)
