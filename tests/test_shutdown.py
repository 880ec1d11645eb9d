"""Shutdown cannot hang: stop accepting, then drain the rooms, all within SHUTDOWN_GRACE_SECONDS.

The rooms are held mid-write by a store that does not answer (FaultyStore.hang), which is what
makes the order and the deadline observable.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.helpers.clients import Crowd, Member, host_event, token_for, wait_for_sockets
from tests.helpers.fakes import FaultyStore
from tests.helpers.process import env, free_port, wait_until_serving
from tests.helpers.raw_ws import RawSocket, resource
from tests.helpers.server import Server, make_config, port_of
from vpiska.server import ShutdownTimedOut, serve
from vpiska.store.sqlite import SqliteStore

UNLIMITED_CHAT = {"chat_rate_per_second": 1e6, "chat_burst": 10**6}


@dataclasses.dataclass
class StoppingServer(Server):
    """A server of `running`: on a FaultyStore, and what `serve` raised once it returned."""

    store: FaultyStore
    outcome: list[ShutdownTimedOut] = dataclasses.field(default_factory=list)


async def hold_a_write(store: FaultyStore, member: Member, line: str) -> trio.Event:
    """`member` says `line` and the room's write of it hangs: the room is mid-write. Setting
    the event returned lets the write go on."""
    release = store.hang("append_chat")
    await member.say(line)
    await store.wait_calls("append_chat", 1)
    return release


@asynccontextmanager
async def running(tmp_path: Path, nursery: trio.Nursery, **overrides: Any
                  ) -> AsyncIterator[tuple[StoppingServer, trio.Event, trio.Event]]:
    """A server on a FaultyStore; yields it, its shutdown trigger and an event set when `serve`
    has returned (ShutdownTimedOut is kept in `outcome`)."""
    config = make_config(tmp_path, **overrides)
    real = await SqliteStore.open(config.store.target)
    store = FaultyStore(real)
    trigger, returned = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(config, store=store,
                        shutdown_trigger=trigger.wait, task_status=task_status)
        except ShutdownTimedOut as timed_out:
            outcome.append(timed_out)
        finally:
            returned.set()

    outcome: list[ShutdownTimedOut] = []
    try:
        binds = await nursery.start(run)
        async with httpx.AsyncClient(base_url=binds[0], timeout=30) as http:
            server = StoppingServer(binds[0], config, http, store, outcome)
            yield server, trigger, returned
    finally:
        trigger.set()
        with trio.move_on_after(30):
            await returned.wait()
        await real.aclose()


async def test_create_during_the_grace_period_is_refused_and_shutdown_still_ends(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with running(tmp_path, nursery, **UNLIMITED_CHAT) as (server, trigger, returned):
        crowd = Crowd(nursery, server)
        _, event_id = await host_event(server)
        member = await crowd.join((await token_for(server))[1], event_id)
        await member.wait_for(lambda m: m.counts() == [1])
        latecomer = await server.sign_up("late", "9009998877")  # its connection stays open
        release = await hold_a_write(server.store, member, "held")  # it cannot drain yet
        trigger.set()
        body = {"name": "late party", "address": "a", "coordinates": {"x": 1, "y": 1}}
        assert await server.codes("/api/v1/events/create", body,
                                  token=latecomer["accessToken"]) == ["InternalError"]
        release.set()
        with trio.fail_after(15):
            await returned.wait()
        assert await member.wait_closed() == 1001
        assert member.chat() == ["held"]  # the queued line was written, then announced
        assert server.outcome == []
        await crowd.aclose()
    check = await SqliteStore.open(server.config.store.target)
    try:
        assert [line.message for line in await check.chat(event_id)] == ["held"]
        assert await check.open_event_of(latecomer["id"]) is None
    finally:
        await check.aclose()


async def test_new_connections_are_refused_while_the_rooms_drain(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with running(tmp_path, nursery, **UNLIMITED_CHAT) as (server, trigger, returned):
        crowd = Crowd(nursery, server)
        _, event_id = await host_event(server)
        member = await crowd.join((await token_for(server))[1], event_id)
        await wait_for_sockets(server, 1)
        release = await hold_a_write(server.store, member, "held")
        trigger.set()
        port = int(server.url.rsplit(":", 1)[1])
        with trio.fail_after(15):  # hypercorn closes its listener first...
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    break
                await stream.aclose()
                # The listener's close shows only as a refused connection: ask again.
                await trio.sleep(0.01)  # how often to ask, not a wait for anything
        assert member.close_code is None  # ...while the room is still draining
        release.set()
        assert await member.wait_closed() == 1001
        with trio.fail_after(15):
            await returned.wait()
        await crowd.aclose()


async def test_a_room_stuck_past_the_deadline_is_abandoned_and_named(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with running(tmp_path, nursery, shutdown_grace_seconds=0.5,
                       **UNLIMITED_CHAT) as (server, trigger, returned):
        crowd = Crowd(nursery, server)
        _, event_id = await host_event(server)
        member = await crowd.join((await token_for(server))[1], event_id)
        await wait_for_sockets(server, 1)
        await hold_a_write(server.store, member, "stuck")  # never released
        trigger.set()
        with trio.fail_after(15):
            await returned.wait()
        [timed_out] = server.outcome
        assert timed_out.events == [event_id]
        await crowd.aclose()


@pytest.mark.parametrize(
    "config_overrides",
    [{**UNLIMITED_CHAT, "actor_inbox_size": 4, "actor_reply_timeout_seconds": 0.5}])
async def test_a_member_whose_lines_cannot_enter_a_full_inbox_is_closed_with_1013(
    tmp_path: Path, nursery: trio.Nursery, config_overrides: dict[str, Any]
) -> None:
    async with running(tmp_path, nursery, **config_overrides) as (server, trigger, returned):
        crowd = Crowd(nursery, server)
        _, event_id = await host_event(server)
        talker = await crowd.join((await token_for(server))[1], event_id)
        listener = await crowd.join((await token_for(server))[1], event_id)
        await wait_for_sockets(server, 2)
        release = server.store.hang("append_chat")
        for i in range(20):  # one write in flight, four queued, then the reader waits
            try:
                await talker.say(f"line {i}")
            except Exception:  # closed under us: that is the point
                break
        assert await talker.wait_closed() == 1013
        assert listener.close_code is None  # only the sender was closed
        release.set()
        await listener.wait_for(lambda m: len(m.chat()) >= 1)
        metrics = (await server.http.get("/metrics")).text
        assert 'vpiska_ws_disconnects_total{reason="overloaded"} 1.0' in metrics
        await crowd.aclose()


async def test_a_store_call_that_never_returns_cannot_hold_the_process(tmp_path: Path) -> None:
    """A room blocked in a worker thread (sqlite waiting on a lock another process holds)
    cannot be cancelled; the shutdown still ends at its deadline, naming the room, exit 3."""
    port = free_port()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "vpiska"],
        env=env(tmp_path, SERVER_PORT=str(port), SHUTDOWN_GRACE_SECONDS="0.5",
                ACTOR_REPLY_TIMEOUT_SECONDS="0.5", CHAT_RATE_PER_SECOND="1000",
                CHAT_BURST="1000"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    database = tmp_path / "data" / "vpiska.db"
    try:
        await wait_until_serving(f"http://127.0.0.1:{port}")
        async with (httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
                    trio.open_nursery() as nursery):
            store = await SqliteStore.open(database)
            server = Server(f"http://127.0.0.1:{port}", make_config(tmp_path), http, store)
            crowd = Crowd(nursery, server)
            _, event_id = await host_event(server)
            member = await crowd.join((await token_for(server))[1], event_id)
            await member.wait_for(lambda m: m.counts() == [1])
            await store.aclose()
            lock = sqlite3.connect(database, timeout=0)
            lock.execute("BEGIN EXCLUSIVE")  # the server's next write waits for it
            await member.say("blocked")
            with trio.fail_after(20):  # the room answers nothing once it is inside that write
                while (await server.call("/api/v1/events/get", {"eventId": event_id})
                       )["errors"] != [{"errorCode": "InternalError"}]:
                    pass
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                code = await process.wait()
            lock.rollback()
            lock.close()
            await crowd.aclose()
            nursery.cancel_scope.cancel()
        assert code == 3
        assert process.stdout is not None
        lines = [json.loads(line) for line in (await _read_all(process.stdout)).splitlines()]
        abandoned = [line for line in lines if "abandoning" in line["event"]]
        assert abandoned
        assert abandoned[0]["events"] == [event_id]
    finally:
        process.kill()
        await process.wait()


async def _read_all(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    async for chunk in stream:
        data += chunk
    return data.decode()




@pytest.mark.parametrize("direct", [True, False], ids=["direct", "adapted-h11"])
async def test_a_member_that_never_reads_cannot_hold_the_shutdown(
    tmp_path: Path, nursery: trio.Nursery, direct: bool
) -> None:
    """A socket whose peer stopped reading is dropped as a slow consumer while the server's
    write to it waits for room that never comes; it must not hold the shutdown past the
    grace period (pings are off: nothing else would ever end it)."""
    async with running(tmp_path, nursery, shutdown_grace_seconds=2, member_outbox_frames=16,
                       ws_ping_seconds=600, direct_websockets=direct,
                       **UNLIMITED_CHAT) as (server, trigger, returned):
        crowd = Crowd(nursery, server)
        _, event_id = await host_event(server)
        talker = await crowd.join((await token_for(server))[1], event_id)
        good = await crowd.join((await token_for(server))[1], event_id)
        _, slow_token = await token_for(server)
        slow = await RawSocket.connect(port_of(server), resource(server, slow_token, event_id),
                                       receive_buffer=4096)
        async with slow.stream:
            await good.wait_for(lambda m: m.counts()[-1:] == [3])
            for i in range(5000):  # up to ~7.5 MB: far more than the slow socket's buffers
                if good.counts()[-1] == 2:  # dropped, its write still waiting
                    break
                def caught_up(m: Member, i: int = i) -> bool:
                    return len(m.chat()) >= i - 8

                await good.wait_for(caught_up)
                await talker.say(f"{i:05d}" + "x" * 1500)
            else:
                raise AssertionError("the slow consumer was never dropped")
            trigger.set()
            with trio.fail_after(server.config.shutdown_grace_seconds + 15):
                await returned.wait()
        await crowd.aclose()
