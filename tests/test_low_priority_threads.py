"""Jobs at the lowest priority on threads of our own (vpiska/low_priority_threads.py). No
test waits for time to pass: a job that must be running says so through the trio token, one
that must stay running blocks on a threading.Event the test sets."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import pytest
import trio
import trio.testing

from vpiska.low_priority_threads import NICENESS, open_low_priority_threads

WAIT_SECONDS = 10


def blocking_job(started: trio.Event, release: threading.Event, ran: list[str],
                 name: str) -> Callable[[], str]:
    """A job that tells the test it started, then runs until `release`."""
    token = trio.lowlevel.current_trio_token()

    def job() -> str:
        token.run_sync_soon(started.set)
        release.wait()
        ran.append(name)
        return name

    return job


def own_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_a_job_runs_at_the_lowest_priority_and_the_event_loop_does_not() -> None:
    before = own_niceness()
    async with open_low_priority_threads(1) as low:
        assert await low.run_sync(own_niceness) == NICENESS
    assert own_niceness() == before


async def test_what_a_job_raises_its_caller_raises() -> None:
    def fails(number: int) -> int:
        raise ValueError(f"no {number}")

    async with open_low_priority_threads(1) as low:
        with pytest.raises(ValueError, match="no 7"):
            await low.run_sync(fails, 7)
        assert await low.run_sync(abs, -3) == 3  # the thread lives on


async def test_a_running_job_holds_none_of_trios_worker_threads() -> None:
    started, release = trio.Event(), threading.Event()
    ran: list[str] = []
    async with open_low_priority_threads(1) as low, trio.open_nursery() as nursery:
        try:
            nursery.start_soon(low.run_sync, blocking_job(started, release, ran, "a"))
            with trio.fail_after(WAIT_SECONDS):
                await started.wait()
            assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
        finally:
            release.set()
    assert ran == ["a"]


async def test_a_caller_cancelled_before_its_job_starts_drops_the_job() -> None:
    started, release = trio.Event(), threading.Event()
    ran: list[str] = []
    unstarted = trio.Event()
    gave_up = trio.Event()
    async with open_low_priority_threads(1) as low, trio.open_nursery() as nursery:
        try:
            nursery.start_soon(low.run_sync, blocking_job(started, release, ran, "first"))
            with trio.fail_after(WAIT_SECONDS):
                await started.wait()  # the one thread is busy: the next job queues

            async def impatient(scope: trio.CancelScope) -> None:
                with scope:
                    await low.run_sync(blocking_job(unstarted, release, ran, "second"))
                gave_up.set()

            scope = trio.CancelScope()
            nursery.start_soon(impatient, scope)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            with trio.fail_after(WAIT_SECONDS):
                await gave_up.wait()  # while the first job still runs
            assert scope.cancelled_caught
        finally:
            release.set()
    assert ran == ["first"]
    assert not unstarted.is_set()


async def test_a_caller_cancelled_while_its_job_runs_waits_for_the_job_to_end() -> None:
    started, release = trio.Event(), threading.Event()
    ran: list[str] = []
    ended = trio.Event()
    scope = trio.CancelScope()

    async def caller() -> None:
        with scope:
            await low.run_sync(blocking_job(started, release, ran, "running"))
        ended.set()

    async with open_low_priority_threads(1) as low, trio.open_nursery() as nursery:
        try:
            nursery.start_soon(caller)
            with trio.fail_after(WAIT_SECONDS):
                await started.wait()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert not ended.is_set()  # the thread is still the job's
        finally:
            release.set()
        with trio.fail_after(WAIT_SECONDS):
            await ended.wait()
    assert ran == ["running"]
    assert scope.cancelled_caught  # and then the caller was cancelled


def low_priority_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("vpiska-low-priority")]


async def test_the_threads_end_with_the_block_and_take_no_job_after_it() -> None:
    assert low_priority_threads_alive() == []
    async with open_low_priority_threads(2) as low:
        await low.run_sync(abs, -1)
        assert low_priority_threads_alive() != []
    assert low_priority_threads_alive() == []
    with pytest.raises(trio.ClosedResourceError):
        await low.run_sync(abs, -1)


async def test_a_refused_priority_is_told_once_and_the_jobs_still_run(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(which: int, who: int, priority: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    both = threading.Barrier(2, timeout=WAIT_SECONDS)  # two threads started, each refused

    def meet() -> None:
        both.wait()

    with caplog.at_level(logging.WARNING, logger="vpiska.low_priority_threads"):
        async with open_low_priority_threads(2) as low, trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(low.run_sync, meet)
    assert [r.message for r in caplog.records].count(
        "low-priority threads: the kernel refused niceness 19; suspected guessers' "
        "password hashes compete with everyone's") == 1
