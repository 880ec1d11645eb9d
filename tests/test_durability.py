"""What survives a killed or stopped server process: every line a member saw is stored."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.helpers.clients import Crowd, Member, token_for
from tests.helpers.process import JWT_KEY, ServerProcess, vpiska_process
from tests.helpers.server import CLIENT_LIMITS, Server, make_config
from vpiska.store.sqlite import SqliteStore


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[tuple[Server, ServerProcess]]:
    """`python -m vpiska` on the test's data directory, as a Server (tests/helpers/server.py),
    with its store file opened beside it (sqlite in WAL mode takes a second connection) to put
    users in. Each start gets a port of its own."""
    async with (
        vpiska_process(tmp_path, JWT_KEY=JWT_KEY, CHAT_RATE_PER_SECOND="1000",
                       CHAT_BURST="1000") as served,
        httpx.AsyncClient(base_url=served.url, timeout=30, limits=CLIENT_LIMITS) as http,
    ):
        store = await SqliteStore.open(tmp_path / "data" / "vpiska.db")
        try:
            yield Server(served.url, make_config(tmp_path, jwt_key=JWT_KEY), http, store), served
        finally:
            await store.aclose()


async def steady_chat(members: list[Member], stop: trio.Event) -> None:
    async def talk(member: Member, i: int) -> None:
        k = 0
        while not stop.is_set() and not member.closed.is_set():
            try:
                await member.say(f"m{i}-{k}")
            except Exception:  # the server went away mid-send
                return
            k += 1
            await trio.sleep(0.01)  # the pace of the load, not a wait for anything

    async with trio.open_nursery() as nursery:
        for i, member in enumerate(members):
            nursery.start_soon(talk, member, i)


async def start_room(server: Server, crowd: Crowd, members: int) -> tuple[str, list[Member]]:
    _, owner = await token_for(server)
    event = await server.ok("/api/v1/events/create", {
        "name": "party", "address": "a", "coordinates": {"x": 1, "y": 2}}, token=owner)
    joined = [await crowd.join((await token_for(server))[1], event["id"]) for _ in range(members)]
    for member in joined:
        await member.wait_for(lambda m: m.counts()[-1:] == [members])
    return event["id"], joined


def assert_stored_covers(stored: list[dict[str, Any]], members: list[Member]) -> None:
    lines = [c["message"] for c in stored]
    assert len(lines) == len(set(lines))
    for member in members:
        seen = member.chat()
        assert seen, "the member saw no chat before the stop"
        start = lines.index(seen[0])
        assert lines[start:start + len(seen)] == seen  # every line seen, in the order seen


async def test_sigkill_loses_no_line_any_member_saw(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with running(tmp_path) as (server, served):
        crowd = Crowd(nursery, server)
        event_id, members = await start_room(server, crowd, 5)
        stop = trio.Event()
        nursery.start_soon(steady_chat, members, stop)
        await members[0].wait_for(lambda m: len(m.chat()) >= 200)
        served.process.send_signal(signal.SIGKILL)
        for member in members:
            await member.wait_closed()
        stop.set()
        await crowd.aclose()
    async with running(tmp_path) as (server, _):
        event = await server.ok("/api/v1/events/get", {"eventId": event_id})
        assert event["usersCount"] == 0  # nobody is connected after a restart
        assert_stored_covers(event["chatMessages"], members)


async def test_sigterm_drains_the_room_and_closes_sockets_with_1001(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with running(tmp_path) as (server, served):
        crowd = Crowd(nursery, server)
        event_id, members = await start_room(server, crowd, 3)
        stop = trio.Event()
        nursery.start_soon(steady_chat, members, stop)
        await members[0].wait_for(lambda m: len(m.chat()) >= 100)
        served.process.send_signal(signal.SIGTERM)
        for member in members:
            assert await member.wait_closed() == 1001
        stop.set()
        # How long the drain took is the server's own verdict: past its grace period
        # (SHUTDOWN_GRACE_SECONDS, 10 s) it logs that the deadline passed, and exits 3 if rooms
        # were still draining. The deadline here is only a generous bound on the wait.
        with trio.fail_after(10 + 30):
            assert await served.exit_code() == 0
        await crowd.aclose()
    records = [json.loads(line) for line in served.text().splitlines()]
    assert not [r for r in records if r["event"].startswith("shutdown deadline passed")]
    assert records[-1]["event"] == "stopped"  # well inside the grace: nothing lingered
    async with running(tmp_path) as (server, _):
        event = await server.ok("/api/v1/events/get", {"eventId": event_id})
        assert_stored_covers(event["chatMessages"], members)
