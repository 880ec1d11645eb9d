"""A fake owning node for a gateway (vpiska/cluster/gateway.py) of event e1: it is the gateway's
owner lookup, RPC and views at once, and `Bus` is a subscription whose messages the test
publishes itself."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import trio

from vpiska.actors import EventView
from vpiska.cluster import protocol
from vpiska.cluster.gateway import GatewayRoom
from vpiska.cluster.protocol import Answer
from vpiska.domain import Coordinates, Event
from vpiska.wire import event_json

EVENT = Event(id="e1", owner_id="u1", name="party", address="here",
              coordinates=Coordinates(1, 2), created_at=datetime(2026, 1, 1, tzinfo=UTC))


class Owner:
    """The owning node: each `snapshot` shows the chat as it is when the request arrives."""

    def __init__(self) -> None:
        self.chat: list[str] = []
        self.asked = 0
        self.release = trio.Event()

    async def owner_of(self, event_id: str) -> str:
        return "owner-node"

    def forget_owner(self, event_id: str) -> None:
        raise AssertionError("the owner always answers here")

    def owner_is(self, event_id: str, node_id: str) -> None:
        raise AssertionError("the owner never changes here")

    async def read(self, event_id: str) -> EventView | None:
        return None  # no view in Redis: every read asks the owner

    node_id = "this-node"

    async def ask(self, node: str, op: protocol.RequestOp, event_id: str,
                  timeout: float) -> Answer:  # noqa: ASYNC109 (Rpc's signature)
        assert isinstance(op, protocol.Snapshot)
        self.asked += 1
        chat = [f'{{"message":"{line}"}}' for line in self.chat]  # read on arrival
        await self.release.wait()
        return Answer(self.asked, "ok", {
            "event": event_json(EVENT, 1, []), "open": True,
            "created_at": EVENT.created_at.isoformat(), "chat_length": len(chat), "chat": chat})


def gateway_for(owner: Owner, nursery: trio.Nursery, bus: Bus | None = None) -> GatewayRoom:
    """A gateway of event e1 whose owner node, RPC and views are `owner`."""
    return GatewayRoom("e1", "u1", owners=owner, bus=cast(Any, bus), rpc=cast(Any, owner),
                       views=owner, store=cast(Any, None), nursery=nursery, reply_timeout=10.0,
                       owner_silence=10.0)


class Bus:
    """One subscription, whose messages the test publishes itself."""

    def __init__(self) -> None:
        self.publish: Any = None

    async def subscribe(self, channel: str, on_message: Any, on_renewed: Any) -> None:
        self.publish = on_message

    async def unsubscribe(self, channel: str) -> None:
        self.publish = None


class JoiningOwner(Owner):
    """Answers a join at the seq the test sets: where the owner's stream was then."""

    def __init__(self, epoch: int, seq: int) -> None:
        super().__init__()
        self.epoch, self.seq = epoch, seq

    async def ask(self, node: str, op: protocol.RequestOp, event_id: str,
                  timeout: float) -> Answer:  # noqa: ASYNC109 (Rpc's signature)
        assert isinstance(op, protocol.Join)
        return Answer(1, "ok", {"epoch": self.epoch, "seq": self.seq, "chat_length": 0,
                                "state": None})
