"""vpiska/store/connection_thread.py: the sqlite store's own thread runs calls one at a time, in
order; results and errors reach their callers; cancellation and closing never lose a call."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator

import pytest
import trio

from vpiska.store.connection_thread import ConnectionThread

DEADLINE = 10  # seconds: a bound for a loaded machine, not a wait


@pytest.fixture
async def thread() -> AsyncIterator[ConnectionThread]:
    started = ConnectionThread("test store")
    started.start()
    yield started
    await started.aclose()


class Held:
    """A call that runs in the thread until the test lets it return."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, value: str) -> str:
        self.running.set()
        if not self.release.wait(DEADLINE):
            raise TimeoutError("the test never let the call return")
        return value

    async def wait_running(self) -> None:
        assert await trio.to_thread.run_sync(self.running.wait, DEADLINE)


async def test_calls_run_in_the_thread_in_the_order_made(thread: ConnectionThread) -> None:
    ran: list[tuple[int, str]] = []

    def record(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        return i * 10

    held = Held()
    results: dict[int, int] = {}

    async def call(i: int) -> None:
        results[i] = await thread.run(record, i)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(thread.run, held, "first")
            await held.wait_running()  # the others queue behind it, in the order made
            for i in range(20):
                nursery.start_soon(call, i)
                await trio.testing.wait_all_tasks_blocked()
            held.release.set()
    assert ran == [(i, "test store") for i in range(20)]
    assert results == {i: i * 10 for i in range(20)}


async def test_an_error_reaches_its_caller_and_the_next_call_runs(
        thread: ConnectionThread) -> None:
    def fail() -> None:
        raise ValueError("disk says no")

    with trio.fail_after(DEADLINE):
        with pytest.raises(ValueError, match="disk says no"):
            await thread.run(fail)
        assert await thread.run(len, "next") == 4


async def test_a_call_cancelled_before_it_is_made_is_not_run(thread: ConnectionThread) -> None:
    ran: list[str] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await thread.run(ran.append, "cancelled")
    assert scope.cancelled_caught
    with trio.fail_after(DEADLINE):
        await thread.run(ran.append, "after")
    assert ran == ["after"]


async def test_a_call_cancelled_while_it_runs_is_waited_for_then_cancelled(
        thread: ConnectionThread) -> None:
    held = Held()
    returned: list[str] = []

    async def call(scope_ready: trio.Event, scopes: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            scope_ready.set()
            returned.append(await thread.run(held, "done"))
            await trio.lowlevel.checkpoint()  # where the cancellation lands
            returned.append("not reached")

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            ready, scopes = trio.Event(), list[trio.CancelScope]()
            nursery.start_soon(call, ready, scopes)
            await ready.wait()
            await held.wait_running()
            scopes[0].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert returned == []  # still waiting for the call, which goes on
            held.release.set()
    assert returned == ["done"]
    assert scopes[0].cancelled_caught


async def test_closing_waits_for_the_calls_made_before_and_ends_the_thread() -> None:
    thread = ConnectionThread("closing store")
    thread.start()
    held = Held()
    results: list[str] = []

    async def call() -> None:
        results.append(await thread.run(held, "made before"))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await held.wait_running()
            nursery.start_soon(thread.aclose)
            await trio.testing.wait_all_tasks_blocked()
            held.release.set()
    assert results == ["made before"]
    assert not any(t.name == "closing store" for t in threading.enumerate())
    with pytest.raises(trio.ClosedResourceError):
        await thread.run(len, "after")
    await thread.aclose()  # again: nothing to do


async def test_many_calls_in_a_row_never_miss_a_wake_up(thread: ConnectionThread) -> None:
    """Each call is woken by a byte in a pipe; none may be left waiting for a later one."""
    with trio.fail_after(DEADLINE):
        for i in range(2000):
            assert await thread.run(os.getpid) > 0, i
