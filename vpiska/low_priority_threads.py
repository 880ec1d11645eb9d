"""Threads of our own at the lowest priority: their work takes only CPU the rest leaves.

The password hashes of suspected guessers (vpiska/fair_slots.py) run here. On trio's worker
threads, next to the users' hashes and the event loop, a storm's admitted guesses took half
a core from them, and a user's login waited behind them (p99 up to twice the issue-20 target
of one hash + 100 ms). Each thread here sets its own niceness to 19 as it starts: where a
thread of normal niceness wants the core (the loop, a user's hash), the kernel gives this
one about 1.5 % of it (CFS weights 15 against 1024), and all of it otherwise.

Why niceness and not SCHED_IDLE (a weight of 3): with group scheduling (autogroups, a
container's cgroup) a process's share of a core follows the weights of its threads there,
so a SCHED_IDLE thread alone on a core was starved by any other busy process: guesses, and a
user who mistyped twice, waited tens of seconds on a shared machine. At 19 a hash is at
worst some 70 times slower, never stopped. Why threads of our own: trio's worker threads are
shared by every `to_thread` call, and a thread cannot lower its niceness again without
CAP_SYS_NICE.

A job is awaited without parking one of trio's worker threads: the thread that ends it wakes
the waiting task through the trio token, so a slow job takes no thread from the store calls.

Resource handling: `open_low_priority_threads` owns the threads; they end when its block
ends, after the jobs they run (every job's caller awaits it inside the block).

Error handling: what a job raises, `LowPriorityThreads.run_sync` raises. A caller cancelled
before its job started drops the job; one cancelled while its job runs waits for it to end,
then is cancelled (a thread cannot be stopped midway, and the bound counts it until it
ends). After the block `run_sync` raises `trio.ClosedResourceError`. If the kernel refuses
the niceness, one warning says so and the threads run at normal priority.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar, TypeVarTuple

import trio

log = logging.getLogger(__name__)

NICENESS = 19

_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")


class LowPriorityThreads:
    """Jobs at the lowest priority on a bounded set of threads (see the module's docstring)."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._closed = False

    async def run_sync(self, job: Callable[[*_Args], _T], *args: *_Args) -> _T:
        """`job(*args)` on one of the threads, once one is free; what it returns or raises."""
        if self._closed:
            raise trio.ClosedResourceError("the low-priority threads have been shut down")
        token = trio.lowlevel.current_trio_token()
        ended = trio.Event()
        future = self._executor.submit(job, *args)
        future.add_done_callback(lambda _: token.run_sync_soon(ended.set))
        try:
            await ended.wait()
        except BaseException:
            if not future.cancel():  # running (or just ended): the thread is its until it ends
                with trio.CancelScope(shield=True):
                    await ended.wait()
            raise
        return future.result()

    def close(self) -> None:
        self._closed = True


@asynccontextmanager
async def open_low_priority_threads(threads: int) -> AsyncIterator[LowPriorityThreads]:
    """At most `threads` threads at niceness NICENESS, for the block's duration."""
    refused = threading.Event()
    executor = ThreadPoolExecutor(threads, thread_name_prefix="vpiska-low-priority",
                                  initializer=_lower_priority, initargs=(refused,))
    low = LowPriorityThreads(executor)
    try:
        yield low
    finally:
        low.close()
        with trio.CancelScope(shield=True):  # the threads end at once: no job is left
            await trio.to_thread.run_sync(executor.shutdown)


def _lower_priority(refused: threading.Event) -> None:
    """As each thread starts: its own niceness (Linux keeps one per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except OSError as error:
        if not refused.is_set():
            refused.set()
            log.warning("low-priority threads: the kernel refused niceness 19; suspected "
                        "guessers' password hashes compete with everyone's",
                        extra={"error": str(error)})
