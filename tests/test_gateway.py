"""A gateway (vpiska/cluster/gateway.py) against a fake owner, on virtual time.

- `events/get`: requests waiting at once (READS_IN_FLIGHT reads are on their way already)
  share one read of the owner, and none is answered from a read made before it arrived. The
  fake `Rpc` reads the event's state when a request reaches it and answers when the test lets
  it, so "a read on its way" is a state the test holds.
- The event's stream: frames the owner published in one message across a socket's join point
  reach the socket from that point on; none is taken for lost.
- A new owner's Hello: chat lines go to it from then on, even while the old owner still
  listens (paused past its lease, it would take them and drop them).
- A join sent to an owner that is leaving and never answers goes to the next owner as soon as
  the node knows it; one no owner answered in time is told to try again (1012), and the
  burst is logged once.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.helpers.fake_owner import EVENT, Bus, JoiningOwner, Owner, gateway_for
from tests.helpers.fakes import RecordingOutbox
from vpiska.actors import CloseCode, EventView, Member
from vpiska.actors.commands import Chat, Join, Joined, Snapshot
from vpiska.cluster import protocol
from vpiska.cluster.gateway import READS_IN_FLIGHT, GatewayRoom, NoOwnerAnswered
from vpiska.cluster.protocol import Answer, Frames, Handover, Hello, Shown, encode
from vpiska.cluster.rpc import NoAnswer
from vpiska.domain import Identity


async def test_reads_waiting_at_once_share_one_owner_read_made_after_they_arrived(
    autojump_clock: trio.testing.MockClock,
) -> None:
    owner = Owner()
    answers: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        gateway = gateway_for(owner, nursery)

        async def get(name: str) -> None:
            view = await gateway.ask(Snapshot)
            assert isinstance(view, EventView)
            answers[name] = view.chat_length

        early = [f"early {i}" for i in range(READS_IN_FLIGHT)]
        for name in early:  # one after the other: each read has left when the next comes
            nursery.start_soon(get, name)
            await trio.testing.wait_all_tasks_blocked()
        assert owner.asked == READS_IN_FLIGHT  # all on their way; each read an empty chat
        owner.chat.append("a line")  # committed and echoed: a client has seen it
        for name in ("late 1", "late 2", "late 3"):
            nursery.start_soon(get, name)
        await trio.testing.wait_all_tasks_blocked()
        assert owner.asked == READS_IN_FLIGHT  # the later ones wait for the next read
        owner.release.set()
    assert answers == {**dict.fromkeys(early, 0), "late 1": 1, "late 2": 1, "late 3": 1}
    assert owner.asked == READS_IN_FLIGHT + 1  # three late requests, one read


class MirroredOwner(Owner):
    """An owner whose view Redis holds (views.ViewMirror); until `mirrored`, it cannot say."""

    mirrored: EventView | None = None

    async def read(self, event_id: str) -> EventView | None:
        return self.mirrored


async def test_a_read_the_view_answers_never_reaches_the_owner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    owner = MirroredOwner()
    owner.release.set()
    async with trio.open_nursery() as nursery:
        gateway = gateway_for(owner, nursery)
        asked = await gateway.ask(Snapshot)  # no view yet (a new owner): the owner answers
        assert isinstance(asked, EventView)
        assert owner.asked == 1
        owner.mirrored = EventView(EVENT, 3, 1, ('{"message":"hi"}',))
        assert await gateway.ask(Snapshot) == owner.mirrored
        assert owner.asked == 1


async def test_frames_published_together_across_a_join_reach_the_socket_from_its_join_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    owner = JoiningOwner(epoch=7, seq=2)  # the socket joined after message 2
    outbox = RecordingOutbox()
    bus = Bus()
    async with trio.open_nursery() as nursery:
        gateway = gateway_for(owner, nursery, bus)
        member = Member(Identity("u2", "guest", ""), outbox)
        joined = await gateway.ask(lambda reply: Join(member, reply))
        assert isinstance(joined, Joined)
        # Messages 2 and 3 went out in one PUBLISH (queued while the one before was in flight).
        bus.publish(encode(Frames("owner-node", 7, 2, [Shown(None, "two"), Shown(None, "three")])))
        bus.publish(encode(Frames("owner-node", 7, 4, [Shown(None, "four")])))
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.take() == ["three", "four"]
        assert outbox.close_code is None  # not told to reconnect: nothing was missing
        nursery.cancel_scope.cancel()


async def test_frames_reach_the_sockets_of_their_audience_or_the_one_they_are_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    owner = JoiningOwner(epoch=7, seq=1)
    outboxes = {1: RecordingOutbox(), 2: RecordingOutbox()}
    bus = Bus()
    async with trio.open_nursery() as nursery:
        gateway = gateway_for(owner, nursery, bus)
        for version, outbox in outboxes.items():  # keys this-node-1 (v1) and this-node-2 (v2)
            member = Member(Identity(f"u{version}", "guest", ""), outbox, version=version)
            await gateway.ask(lambda reply, m=member: Join(m, reply))  # type: ignore[misc]
        bus.publish(encode(Frames("owner-node", 7, 2, [
            Shown(0, "line/v1", 1), Shown(0, "line/v2", 2), Shown(None, "both/"),
            Shown(None, "ack/", 2, "this-node-2"), Shown(None, "not-here/", 2, "other-node-1")])))
        await trio.testing.wait_all_tasks_blocked()
        assert outboxes[1].take() == ["line/v1", "both/"]
        assert outboxes[2].take() == ["line/v2", "both/", "ack/"]
        nursery.cancel_scope.cancel()


class MovingOwner(JoiningOwner):
    """The owner as the node sees it (a cache a Hello updates), and where notices went."""

    def __init__(self, epoch: int, seq: int) -> None:
        super().__init__(epoch, seq)
        self.cached = "old-owner"
        self.told: list[tuple[str, str]] = []

    async def owner_of(self, event_id: str) -> str:
        return self.cached

    def owner_is(self, event_id: str, node_id: str) -> None:
        self.cached = node_id

    async def tell(self, node: str, op: protocol.NoticeOp, event_id: str) -> None:
        self.told.append((node, op.op))  # the old owner, still listening, takes it too


async def talking_member(gateway: GatewayRoom) -> Member:
    """A socket joined through `gateway` that has said a line ("before")."""
    member = Member(Identity("u2", "guest", ""), RecordingOutbox())
    assert isinstance(await gateway.ask(lambda reply: Join(member, reply)), Joined)
    await gateway.send(Chat(member.identity, "before"))
    return member


async def test_after_a_new_owners_hello_chat_lines_go_to_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    owner = MovingOwner(epoch=7, seq=0)
    bus = Bus()
    async with trio.open_nursery() as nursery:
        gateway = gateway_for(owner, nursery, bus)
        member = await talking_member(gateway)
        bus.publish(encode(Hello("new-owner", 8, 1, 0)))
        await trio.testing.wait_all_tasks_blocked()
        await gateway.send(Chat(member.identity, "after"))
        assert owner.told == [("old-owner", "chat"), ("new-owner", "sync"),
                              ("new-owner", "chat")]
        nursery.cancel_scope.cancel()


async def test_between_a_handover_and_the_next_owners_hello_chat_lines_wait_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The old owner has ended the room when it says Handover, and its lease may still name
    it: a line sent to it then would be lost. Lines wait for the new owner's Hello."""
    owner = MovingOwner(epoch=7, seq=0)
    bus = Bus()
    async with trio.open_nursery() as nursery:
        gateway = gateway_for(owner, nursery, bus)
        member = await talking_member(gateway)
        bus.publish(encode(Handover("old-owner", 7, 1)))
        nursery.start_soon(gateway.send, Chat(member.identity, "held"))
        await trio.testing.wait_all_tasks_blocked()
        assert owner.told == [("old-owner", "chat")]
        bus.publish(encode(Hello("new-owner", 8, 1, 0)))
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(owner.told) == [("new-owner", "chat"), ("new-owner", "sync"),
                                      ("old-owner", "chat")]
        nursery.cancel_scope.cancel()


class LeavingOwner(MovingOwner):
    """An old owner that takes requests and never answers (it is shutting down); the node
    learns the next owner when the test says (its Left notice, or the next owner's Hello)."""

    def __init__(self, epoch: int, seq: int) -> None:
        super().__init__(epoch, seq)
        self.asked_nodes: list[str] = []

    def forget_owner(self, event_id: str) -> None:
        pass  # the lookup finds the old owner's lease again until it is released

    async def ask(self, node: str, op: protocol.RequestOp, event_id: str,
                  timeout: float) -> Answer:  # noqa: ASYNC109 (Rpc's signature)
        self.asked_nodes.append(node)
        if node == "old-owner":
            await trio.sleep(timeout)
            raise NoAnswer(f"{node} did not answer")
        return await super().ask(node, op, event_id, timeout)


async def test_a_join_sent_to_an_owner_that_left_goes_to_the_next_owner_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    owner = LeavingOwner(epoch=7, seq=0)
    outbox = RecordingOutbox()
    async with trio.open_nursery() as nursery:
        gateway = gateway_for(owner, nursery, Bus())
        member = Member(Identity("u2", "guest", ""), outbox)

        async def leave_soon() -> None:
            await trio.sleep(3)
            owner.cached = "this-node"  # the old owner left; this node owns the event now

        nursery.start_soon(leave_soon)
        joined = await gateway.ask(lambda reply: Join(member, reply))
        assert isinstance(joined, Joined)
        assert trio.current_time() < 3 + 1  # not the whole reply deadline
        assert owner.asked_nodes == ["old-owner", "this-node"]
        assert outbox.close_code is None
        nursery.cancel_scope.cancel()


async def test_joins_no_owner_answered_in_time_are_told_to_try_again_and_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    owner = LeavingOwner(epoch=7, seq=0)
    outboxes = [RecordingOutbox() for _ in range(5)]
    async with trio.open_nursery() as nursery:
        gateway = gateway_for(owner, nursery, Bus())

        async def join(outbox: RecordingOutbox) -> None:
            member = Member(Identity("u2", "guest", ""), outbox)
            with pytest.raises(NoOwnerAnswered):
                await gateway.ask(lambda reply: Join(member, reply))

        async with trio.open_nursery() as joining:
            for outbox in outboxes:
                joining.start_soon(join, outbox)
        nursery.cancel_scope.cancel()
    assert [outbox.close_code for outbox in outboxes] == [CloseCode.SERVICE_RESTART] * 5
    warned = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert [r.getMessage() for r in warned] == [
        "event commands unanswered: no owner answered in time"]
