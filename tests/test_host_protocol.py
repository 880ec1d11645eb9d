"""The host's removals between nodes (vpiska/cluster): `CloseSockets` on the event's stream
closes the sockets it names and no other, in the stream's order; a join the owner turns away
closes its socket with the owner's code. A gateway against a fake owner, on virtual time."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers.fake_owner import Bus, JoiningOwner, gateway_for
from tests.helpers.fakes import RecordingOutbox
from vpiska.actors import CloseCode, Member
from vpiska.actors.commands import Join
from vpiska.cluster import protocol
from vpiska.cluster.protocol import Answer, CloseSockets, Frames, Shown, decode, encode
from vpiska.domain import Identity
from vpiska.errors import DomainError


def test_close_sockets_reads_back() -> None:
    message = CloseSockets("node-a", 3, 9, 4003, ["node-b-1", "node-b-7"])
    assert json.loads(encode(message)) == ["k", "node-a", 3, 9, 4003, ["node-b-1", "node-b-7"]]
    assert decode(encode(message)) == message


@pytest.mark.parametrize("body", [["k", "node-a", 3, 9, 4003], ["k", "node-a", 3, 9, 4003, 5],
                                  ["k", "node-a", 3, 9, "x", []]])
def test_a_malformed_close_sockets_is_dropped(body: list[Any]) -> None:
    assert decode(json.dumps(body).encode()) is None


class ToldOwner(JoiningOwner):
    """Takes the notices a gateway sends (a closed socket's leave)."""

    async def tell(self, node: str, op: protocol.NoticeOp, event_id: str) -> None:
        pass


async def test_close_sockets_closes_the_sockets_it_names_after_the_frames_before_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    owner = ToldOwner(epoch=7, seq=1)
    bus = Bus()
    removed, staying = RecordingOutbox(), RecordingOutbox()
    async with trio.open_nursery() as nursery:
        gateway = gateway_for(owner, nursery, bus)
        for user, outbox in (("u2", removed), ("u3", staying)):  # this-node-1, this-node-2
            member = Member(Identity(user, "guest", ""), outbox)
            await gateway.ask(lambda reply, m=member: Join(m, reply))  # type: ignore[misc]
        bus.publish(encode(Frames("owner-node", 7, 2, [Shown(None, "before/")])))
        bus.publish(encode(CloseSockets("owner-node", 7, 3, 4003, ["this-node-1", "gone-9"])))
        bus.publish(encode(Frames("owner-node", 7, 4, [Shown(None, "after/")])))
        await trio.testing.wait_all_tasks_blocked()
        assert removed.frames == ["before/"]
        assert removed.close_code == CloseCode.REMOVED
        assert staying.take() == ["before/", "after/"]
        assert staying.close_code is None
        nursery.cancel_scope.cancel()


class BanningOwner(ToldOwner):
    async def ask(self, node: str, op: protocol.RequestOp, event_id: str,
                  timeout: float) -> Answer:  # noqa: ASYNC109 (Rpc's signature)
        assert isinstance(op, protocol.Join)
        return Answer(1, "ok", {"closed": 4003})


async def test_a_join_the_owner_turns_away_closes_with_its_code_and_is_refused_here_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()
    outbox = RecordingOutbox()
    async with trio.open_nursery() as nursery:
        gateway = gateway_for(BanningOwner(epoch=7, seq=1), nursery, bus)
        member = Member(Identity("u2", "guest", ""), outbox)
        with pytest.raises(DomainError):
            await gateway.ask(lambda reply: Join(member, reply))
        assert outbox.close_code == CloseCode.REMOVED
        assert gateway.banned == {"u2"}  # the next handshake here gets 403
        assert gateway.sockets == 0
        nursery.cancel_scope.cancel()
