"""Where a caller or another node's message goes (vpiska/cluster/routing.py), on a fake Redis, a
fake supervisor and virtual time (tests/cluster_parts.py).

Leases are put in the fake Redis as another node would hold them; what this node sends on to
other nodes is what the fake RPC was told, what reaches its rooms what the fake owner link
received.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from tests.helpers.cluster_parts import TTL, Parts, make_parts, open_event
from vpiska.cluster import protocol, redis, routing
from vpiska.cluster.gateway import RETRY_SECONDS, GatewayRoom
from vpiska.cluster.protocol import Answer, Notice, Request, encode, encode_batch
from vpiska.cluster.routing import GATEWAY_IDLE_SECONDS, MAX_FORWARDS


def chat(event_id: str, text: str, forwarded: int = 0) -> bytes:
    """A chat line from a socket on another node, as that node sends it."""
    return encode(Notice(protocol.Chat("u1", "bob", "", text, forwarded=forwarded), event_id))


def told_line(parts: Parts) -> tuple[str, protocol.Chat]:
    """The one chat line sent on to another node, and that node."""
    [(node, line, _)] = parts.rpc.told
    assert isinstance(line, protocol.Chat)
    return node, line


def texts(parts: Parts) -> list[str]:
    return [notice.op.text if isinstance(notice.op, protocol.Chat) else notice.op.op
            for notice in parts.owner_link.received_notices]


async def alone(nursery: trio.Nursery) -> Parts:
    """A node that is the only live one: every event is designated to it."""
    parts = make_parts(nursery)
    await parts.membership.beat()
    return parts


async def test_a_chat_line_for_an_event_owned_elsewhere_is_forwarded_to_its_owner(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = await alone(nursery)
    event = await open_event(parts.store)
    parts.redis.put(redis.lease_key(event.id), "owner-node 3", TTL)
    parts.routing.node_message(chat(event.id, "hi"))
    await trio.testing.wait_all_tasks_blocked()
    [(_, _, event_id)] = parts.rpc.told
    node, line = told_line(parts)
    assert (node, event_id) == ("owner-node", event.id)
    assert line.text == "hi"
    assert line.forwarded == 1
    assert parts.supervisor.rooms == {}  # its lease is held: not started here
    assert parts.owner_link.received_notices == []


async def test_a_line_forwarded_as_often_as_allowed_is_dropped_with_a_word(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=routing.__name__)
    parts = await alone(nursery)
    event = await open_event(parts.store)
    parts.redis.put(redis.lease_key(event.id), "owner-node 3", TTL)
    parts.routing.node_message(chat(event.id, "round and round", forwarded=MAX_FORWARDS))
    await trio.testing.wait_all_tasks_blocked()
    assert parts.rpc.told == []
    assert "chat line dropped: forwarded to a node that does not run the event" in caplog.text


async def test_notices_that_arrive_while_their_room_starts_reach_it_in_their_order(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = await alone(nursery)
    event = await open_event(parts.store)
    parts.supervisor.open = trio.Event()  # the room's claim waits for the store
    parts.routing.node_message(chat(event.id, "one"))
    parts.routing.node_message(encode_batch([
        chat(event.id, "two"), encode(Notice(protocol.Sync("gateway-node", []), event.id)),
        chat(event.id, "three")]))
    await trio.testing.wait_all_tasks_blocked()
    assert parts.owner_link.received_notices == []  # held
    assert len(parts.supervisor.claims) == 1
    parts.supervisor.open.set()
    await trio.testing.wait_all_tasks_blocked()
    assert texts(parts) == ["one", "two", "sync", "three"]
    assert parts.rpc.told == []


async def test_a_line_whose_owner_does_not_listen_waits_until_another_node_owns_the_event(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    """The owner died: its lease still names it until it expires, and the designated node
    takes the event over. Meanwhile the line is tried again, not lost."""
    parts = await alone(nursery)
    event = await open_event(parts.store)
    parts.redis.put(redis.lease_key(event.id), "dead-node 3", TTL)
    parts.rpc.deaf.add("dead-node")
    parts.routing.node_message(chat(event.id, "patient", forwarded=1))
    await trio.sleep(TTL / 2)
    assert parts.rpc.told == []
    parts.redis.put(redis.lease_key(event.id), "next-node 4", TTL)
    await trio.sleep(2 * RETRY_SECONDS)
    node, line = told_line(parts)
    assert node == "next-node"
    assert line.text == "patient"
    assert line.forwarded == 2


async def test_a_line_whose_owner_lease_names_this_node_reaches_the_room_once_it_runs_here(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    """A lease this node held, released as its room was handed over, or one it is taking."""
    parts = await alone(nursery)
    event = await open_event(parts.store)
    parts.redis.put(redis.lease_key(event.id), f"{parts.node_id} 3", TTL)
    parts.routing.node_message(chat(event.id, "here after all"))
    await trio.sleep(TTL / 2)
    assert parts.owner_link.received_notices == []
    parts.redis.delete(redis.lease_key(event.id))
    assert await parts.ownership.activate(event.id) is not None
    await trio.sleep(2 * RETRY_SECONDS)
    assert texts(parts) == ["here after all"]
    assert parts.rpc.told == []


async def test_a_request_for_an_event_designated_here_starts_its_room_and_is_answered(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = await alone(nursery)
    event = await open_event(parts.store)
    request = Request(7, "asking-node", protocol.Snapshot(), event.id)
    parts.routing.node_message(encode(request))
    await trio.testing.wait_all_tasks_blocked()
    assert event.id in parts.supervisor.rooms
    assert parts.owner_link.answered == [request]


async def test_a_reply_goes_to_the_request_waiting_for_it(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = await alone(nursery)
    parts.routing.node_message(encode(Answer(3, "ok", {"users": 2})))
    assert parts.rpc.replies == [Answer(3, "ok", {"users": 2})]


async def test_find_gives_the_room_here_or_one_gateway_to_the_owner_forgotten_once_idle(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
) -> None:
    parts = await alone(nursery)
    nursery.start_soon(parts.routing.sweep)
    own, elsewhere, closed = [await open_event(parts.store) for _ in range(3)]
    await parts.store.close_event(closed.id)
    room = await parts.ownership.activate(own.id)
    assert room is not None
    assert await parts.routing.find(own.id) is room
    assert await parts.routing.find(closed.id) is None
    gateway = await parts.routing.find(elsewhere.id)
    assert isinstance(gateway, GatewayRoom)
    await trio.sleep(GATEWAY_IDLE_SECONDS / 2)
    assert await parts.routing.find(elsewhere.id) is gateway  # used again: idle from now on
    await trio.sleep(GATEWAY_IDLE_SECONDS - TTL / 3)
    assert parts.routing.gateways == {elsewhere.id: gateway}
    await trio.sleep(TTL)
    assert parts.routing.gateways == {}
    again = await parts.routing.find(elsewhere.id)
    assert isinstance(again, GatewayRoom)
    assert again is not gateway
