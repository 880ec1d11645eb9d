"""Supervision: a crashed event actor is restarted from the store with its members still
connected; past the restart limit its sockets close with 1011 and the event stays open."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio

from tests.helpers.clients import Crowd, host_event, token_for
from tests.helpers.fakes import FaultyStore
from tests.helpers.raw_ws import RawSocket, resource
from tests.helpers.server import BOTH_WRITE_PATHS, Server, port_of
from vpiska.domain import ChatMessage
from vpiska.store import Store

pytestmark = BOTH_WRITE_PATHS


@pytest.fixture
def wrap_store() -> Callable[[Store], Store]:
    return FaultyStore


def faults(server: Server) -> FaultyStore:
    assert isinstance(server.store, FaultyStore)
    return server.store


def crash_on(server: Server, poison: str) -> None:
    """Make the store fail a chat write that contains `poison`, as a lost database would."""
    def poisoned(event_id: str, first_seq: int, messages: Sequence[ChatMessage]) -> bool:
        return any(poison in m.message for m in messages)

    faults(server).fail("append_chat", poisoned)


async def test_crashed_actor_restarts_and_members_stay_connected(
    server: Server, crowd: Crowd, caplog: pytest.LogCaptureFixture,
) -> None:
    crash_on(server, "boom")
    _, event_id = await host_event(server)
    _, ann = await token_for(server)
    _, bob = await token_for(server)
    first = await crowd.join(ann, event_id)
    second = await crowd.join(bob, event_id)
    await second.wait_for(lambda m: m.counts()[-1:] == [2])
    await first.say("before")
    await second.wait_for(lambda m: m.chat() == ["before"])
    with caplog.at_level(logging.WARNING):
        await first.say("boom")  # the actor raises; the supervisor restarts it
        # Said at once, "after" could join "boom" in one group-commit write and be lost with
        # it (never seen, so never promised): it is said once the crashing write was made.
        with trio.fail_after(15):
            await faults(server).wait_calls("append_chat", 2)
        await first.say("after")
        for member in (first, second):
            await member.wait_for(lambda m: m.chat() == ["before", "after"])
    assert any(r.message == "event room restarting" for r in caplog.records)
    assert any(r.message == "event room crashed" and r.exc_info for r in caplog.records)
    assert first.close_code is None
    assert second.close_code is None
    event = await server.ok("/api/v1/events/get", {"eventId": event_id})
    assert [c["message"] for c in event["chatMessages"]] == ["before", "after"]
    assert event["usersCount"] == 2
    third = await crowd.join((await token_for(server))[1], event_id)  # the room still admits people
    await second.wait_for(lambda m: m.counts()[-1] == 3)
    await third.say("hello")
    await second.wait_for(lambda m: m.chat()[-1:] == ["hello"])


async def test_crash_during_a_request_answers_internal_error_not_a_hang(
    server: Server, crowd: Crowd
) -> None:
    token, event_id = await host_event(server)
    member = await crowd.join((await token_for(server))[1], event_id)
    faults(server).fail("update_event")
    body = {"eventId": event_id, "address": "x", "coordinates": {"x": 1, "y": 1}}
    assert await server.codes("/api/v1/events/update", body, token=token) == ["InternalError"]
    faults(server).heal("update_event")
    assert await server.ok("/api/v1/events/update", body, token=token) is None
    await member.wait_for(lambda m: any('"address":"x"' in f for f in m.frames))
    assert member.close_code is None


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"actor_max_restarts": 2, "actor_restart_window_seconds": 60}


async def test_restart_limit_closes_sockets_with_1011_and_keeps_the_event_open(
    server: Server, crowd: Crowd
) -> None:
    crash_on(server, "boom")
    _, event_id = await host_event(server)
    member = await crowd.join((await token_for(server))[1], event_id)
    await member.wait_for(lambda m: m.counts() == [1])
    # One line per crashing write (group commit would put lines sent at once into one): each
    # line is sent once the store has seen the previous one. Three crashes in the window are
    # one too many.
    for i in range(3):
        await member.say(f"boom {i}")
        with trio.fail_after(15):
            await faults(server).wait_calls("append_chat", i + 1)
    assert await member.wait_closed() == 1011
    assert await server.codes("/api/v1/events/get", {"eventId": event_id}) == ["InternalError"]
    status = await RawSocket.handshake_status(
        port_of(server), resource(server, (await token_for(server))[1], event_id))
    assert status == 503
    stored = await server.store.event(event_id)
    assert stored is not None
    assert stored.is_open  # served again after the next start
