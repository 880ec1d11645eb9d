"""vpiska/transport/admission.py: past MAX_PENDING_HANDSHAKES handshakes in progress, a new
one is answered 503 with Retry-After at once; the admitted ones join, the refused ones get in
when they retry, and plain HTTP is served throughout.

The socket tests hold handshakes in progress without racing the clock: a member's chat line
holds its room's actor in a store write that hangs (FaultyStore), so a handshake with `since`,
answered 101 before its join, stays in progress until the test releases the write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from tests.helpers.clients import Crowd, host_event, token_for, wait_for_sockets
from tests.helpers.fakes import FaultyStore
from tests.helpers.metrics import scrape, value
from tests.helpers.raw_http import connection, read_to_end, request
from tests.helpers.raw_ws import RawMember, RawSocket, resource
from tests.helpers.server import Server, port_of
from vpiska import metrics
from vpiska.config import Config, ConfigError
from vpiska.store import Store
from vpiska.transport.admission import (
    MAX_RETRY_AFTER_SECONDS,
    PACE_MIN_HANDSHAKES,
    RETRY_AFTER_SECONDS,
    Admission,
    refusal,
)

BOUND = 2
REFUSAL = refusal(RETRY_AFTER_SECONDS)  # what a node with no pace to go by answers
REFUSED = "vpiska_ws_handshakes_refused_total"
UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"max_pending_handshakes": BOUND, "ws_ping_seconds": 600}


@pytest.fixture
def wrap_store() -> Callable[[Store], Store]:
    return FaultyStore


@pytest.fixture
async def members(nursery: trio.Nursery) -> AsyncIterator[list[RawMember]]:
    """Raw members the test connects (`connect`), reading their frames; closed at its end."""
    opened: list[RawMember] = []
    yield opened
    for member in opened:
        await member.raw.stream.aclose()


async def connect(server: Server, members: list[RawMember], nursery: trio.Nursery,
                  token: str, event_id: str, **params: Any) -> RawMember:
    """A member, once its upgrade is answered 101 (not necessarily in the room yet)."""
    member = RawMember(await RawSocket.connect(port_of(server),
                                               resource(server, token, event_id, **params)))
    members.append(member)
    nursery.start_soon(member.collect)
    return member


def refused_so_far() -> float:
    """The process-wide count (the unit tests have no server to scrape)."""
    family = next(iter(metrics.HANDSHAKES_REFUSED.collect()))
    return next(sample.value for sample in family.samples if sample.name == REFUSED)


# The bound itself, on virtual time.


async def test_the_bound_admits_that_many_then_refuses_until_one_finishes(
    autojump_clock: trio.testing.MockClock
) -> None:
    admission = Admission(2)
    before = refused_so_far()
    assert admission.admit()
    assert admission.admit()
    assert not admission.admit()
    admission.finished()
    assert admission.admit()
    assert not admission.admit()
    assert refused_so_far() - before == 2


async def test_a_burst_of_refusals_is_two_log_lines(
    autojump_clock: trio.testing.MockClock, log_lines: list[dict[str, Any]]
) -> None:
    admission = Admission(4)
    for _ in range(4):
        admission.admit()
    for _ in range(100):  # the crowd keeps coming while the node is full
        assert not admission.admit()
        admission.finished()  # one finishes: just under the bound, not half
        assert admission.admit()
    await trio.sleep(3)
    for _ in range(4):
        admission.finished()
    lines = [line for line in log_lines if line["logger"] == "vpiska.transport.admission"]
    assert [(line["level"], line["event"]) for line in lines] == [
        ("warning", "websocket handshakes refused with 503: too many in progress"),
        ("info", "websocket handshakes admitted again")]
    assert lines[0]["max_pending_handshakes"] == 4
    assert lines[1]["refused"] == 100
    assert lines[1]["seconds"] == 3


def retry_after(answer: bytes) -> int:
    head = answer.decode().lower()
    assert head.startswith("http/1.1 503 service unavailable\r\n"), head
    return int(head.split("retry-after: ", 1)[1].split("\r\n", 1)[0])


async def fill(admission: Admission, pace: int) -> None:
    """Finish `pace` handshakes over the last second (spread evenly) and leave the bound
    full: the node's pace is `pace` a second, and it is refusing."""
    for _ in range(pace):
        assert admission.admit()
        await trio.sleep(1 / pace)
        admission.finished()
    for _ in range(admission.limit):
        assert admission.admit()


async def test_with_no_pace_to_go_by_a_refused_client_is_told_the_soonest(
    autojump_clock: trio.testing.MockClock
) -> None:
    admission = Admission(10)
    await fill(admission, PACE_MIN_HANDSHAKES - 1)  # too few finished to tell a pace
    answers = []
    for _ in range(1000):
        assert not admission.admit()
        answers.append(admission.refusal())
    assert answers == [REFUSAL] * 1000


async def test_a_burst_of_refused_clients_is_lined_up_at_the_nodes_pace(
    autojump_clock: trio.testing.MockClock
) -> None:
    admission = Admission(100)  # 100 in progress: half a second's worth at 200 a second
    await fill(admission, 200)
    told = []
    for _ in range(2000):
        assert not admission.admit()
        told.append(retry_after(admission.refusal()))
    assert told == sorted(told)  # first refused, first back
    assert told[0] == 1  # behind the half second the 100 in progress take
    assert told[-1] == 11  # half a second, then 2,000 at 200 a second
    # No second is promised to more clients than the node finishes in one (give or take the
    # rounding at its edges); the first is half taken by the 100 in progress.
    assert all(told.count(second) <= 201 for second in range(1, 12))
    assert told.count(1) <= 101


async def test_turns_end_at_the_longest_wait_and_start_again_after_the_burst(
    autojump_clock: trio.testing.MockClock
) -> None:
    admission = Admission(100)
    await fill(admission, 100)  # 100 a second: 30 s of turns are 3,000 clients
    told = []
    for _ in range(4000):
        assert not admission.admit()
        told.append(retry_after(admission.refusal()))
    assert max(told) == MAX_RETRY_AFTER_SECONDS
    # 1 s for the 100 in progress, then 100 a second: the 2,800th is told 29 s, and those
    # after it the longest wait.
    assert abs(sum(1 for wait in told if wait < MAX_RETRY_AFTER_SECONDS) - 2800) <= 1
    for _ in range(100):  # the burst is over, the node got through it
        admission.finished()
    await trio.sleep(60)
    await fill(admission, 100)
    assert not admission.admit()
    assert retry_after(admission.refusal()) == 2  # behind the 100 in progress, not the burst


@pytest.mark.parametrize(("value", "bound"), [("", 1024), ("8", 8), ("0", 0)],
                         ids=["default", "set", "no-bound"])
def test_max_pending_handshakes_is_read_from_the_environment(value: str, bound: int) -> None:
    assert Config.from_env({"MAX_PENDING_HANDSHAKES": value}).max_pending_handshakes == bound


def test_a_negative_bound_names_its_variable() -> None:
    with pytest.raises(ConfigError) as invalid:
        Config.from_env({"MAX_PENDING_HANDSHAKES": "-1"})
    assert invalid.value.variable == "MAX_PENDING_HANDSHAKES"


# On a server: real sockets.


@asynccontextmanager
async def held_room(server: Server, members: list[RawMember], nursery: trio.Nursery
                    ) -> AsyncIterator[tuple[str, trio.Event]]:
    """An event whose actor is held in a chat write until the returned event is set: a
    handshake to it with `since` stays in progress (answered 101, not yet joined)."""
    _, event_id = await host_event(server)
    _, token = await token_for(server)
    chatter = await connect(server, members, nursery, token, event_id)
    await chatter.wait_for(lambda m: bool(m.frames))  # in the room
    store = server.store
    assert isinstance(store, FaultyStore)
    released = store.hang("append_chat")
    await chatter.say("hold on")
    with trio.fail_after(15):
        await store.wait_calls("append_chat", 1)  # the actor waits in the write now
    try:
        yield event_id, released
    finally:
        released.set()


async def join_in_progress(server: Server, members: list[RawMember], nursery: trio.Nursery,
                           event_id: str) -> RawMember:
    """A member whose handshake is answered 101 and whose join waits for the held actor."""
    _, token = await token_for(server)
    return await connect(server, members, nursery, token, event_id, since=0)


async def upgrade_answer(server: Server, target: str) -> bytes:
    """Everything the server sends for an upgrade request it refuses, up to its close."""
    async with connection(port_of(server)) as stream:
        await stream.send_all(request(target, headers=UPGRADE))
        return await read_to_end(stream)


async def test_handshakes_past_the_bound_get_503_with_retry_after_the_rest_join(
    server: Server, members: list[RawMember], nursery: trio.Nursery
) -> None:
    before = value(await scrape(server), REFUSED)
    async with held_room(server, members, nursery) as (event_id, released):
        admitted = [await join_in_progress(server, members, nursery, event_id)
                    for _ in range(BOUND)]
        tokens = [(await token_for(server))[1] for _ in range(5)]
        answers: list[bytes] = []

        async def knock(token: str) -> None:
            answers.append(await upgrade_answer(server, resource(server, token, event_id)))

        async with trio.open_nursery() as crowd:
            for token in tokens:
                crowd.start_soon(knock, token)
        assert answers == [REFUSAL] * 5  # the whole answer, then the connection's end
        assert b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS in REFUSAL
        released.set()
        for member in admitted:
            await member.wait_for(lambda m: m.chat() == ["hold on"])  # joined, caught up
    # The refused clients come back (after Retry-After, here at once: nothing is in progress)
    # and get in.
    for token in tokens:
        member = await connect(server, members, nursery, token, event_id)
        await member.wait_for(lambda m: bool(m.frames))
    await wait_for_sockets(server, 1 + BOUND + 5)  # with the chatter
    assert value(await scrape(server), REFUSED) - before == 5


async def test_plain_http_and_probes_are_served_while_handshakes_are_refused(
    server: Server, members: list[RawMember], nursery: trio.Nursery
) -> None:
    owner, other_event = await host_event(server)
    async with held_room(server, members, nursery) as (event_id, _):
        for _ in range(BOUND):
            await join_in_progress(server, members, nursery, event_id)
        _, token = await token_for(server)
        assert await upgrade_answer(server, resource(server, token, event_id)) == REFUSAL
        got = await server.call("/api/v1/events/get", {"eventId": other_event}, token=owner)
        assert got["isSuccess"] is True
        for probe in ("/readyz", "/health", "/healthz", "/metrics"):
            assert (await server.http.get(probe)).status_code == 200, probe
        ready = await server.http.get("/readyz")
        assert ready.json()["result"] == {"status": "ready"}
        # Still refusing: the requests above took no handshake's place.
        assert await upgrade_answer(server, resource(server, token, event_id)) == REFUSAL


async def test_a_handshake_the_app_refuses_frees_its_place(
    server: Server, crowd: Crowd
) -> None:
    _, event_id = await host_event(server)
    for _ in range(3 * BOUND):  # a leak would refuse the later ones with 503
        answer = await upgrade_answer(server, resource(server, "not-a-token", event_id))
        assert answer.startswith(b"HTTP/1.1 401 "), answer
    _, token = await token_for(server)
    await crowd.join(token, event_id)


@pytest.mark.parametrize("config_overrides", [{"max_pending_handshakes": 0}], ids=["no-bound"])
async def test_no_bound_refuses_nothing(server: Server, members: list[RawMember],
                                        nursery: trio.Nursery) -> None:
    async with held_room(server, members, nursery) as (event_id, released):
        for _ in range(3 * BOUND):
            await join_in_progress(server, members, nursery, event_id)
        released.set()
        await wait_for_sockets(server, 1 + 3 * BOUND)


async def test_the_refusal_is_logged_once(
    server: Server, members: list[RawMember], nursery: trio.Nursery,
    log_lines: list[dict[str, Any]]
) -> None:
    async with held_room(server, members, nursery) as (event_id, _):
        for _ in range(BOUND):
            await join_in_progress(server, members, nursery, event_id)
        _, token = await token_for(server)
        for _ in range(10):
            assert await upgrade_answer(server, resource(server, token, event_id)) == REFUSAL
    warnings = [line for line in log_lines if line["level"] == "warning"
                and line["logger"] == "vpiska.transport.admission"]
    assert len(warnings) == 1, warnings
