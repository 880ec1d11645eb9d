"""Threads of our own whose work runs only on cores that have nothing else to do.

The password hashes of suspected guessers (vpiska/fair_slots.py) run here: on trio's worker
threads, next to the users' hashes and the event loop, they took half a core from them while
a storm lasted, and a user's login waited behind them (p99 up to twice the issue-20 target
of one hash + 100 ms). Each thread here puts itself in Linux's SCHED_IDLE class as it starts:
the kernel runs it only when no normal thread of any process wants that core, and takes the
core back as soon as one does. trio's worker threads are shared by every `to_thread` call
and a thread cannot raise its priority again without CAP_SYS_NICE, so these are threads of
their own, never lent to other work.

A job is awaited without parking one of trio's worker threads: the thread that ends it wakes
the waiting task through the trio token, so a slow job at idle priority takes no thread from
the store calls.

Resource handling: `open_idle_threads` owns the threads; they end when its block ends, after
the jobs they run (every job's caller awaits it inside the block).

Error handling: what a job raises, `IdleThreads.run_sync` raises. A caller cancelled before
its job started drops the job; one cancelled while its job runs waits for it to end, then is
cancelled (a thread cannot be stopped midway, and the bound counts it until it ends). After
the block `run_sync` raises `trio.ClosedResourceError`. If Linux refuses SCHED_IDLE, one
warning says so and the threads run at normal priority.
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

_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")


class IdleThreads:
    """Jobs run at idle priority on a bounded set of threads (see the module's docstring)."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._closed = False

    async def run_sync(self, job: Callable[[*_Args], _T], *args: *_Args) -> _T:
        """`job(*args)` on one of the threads, once one is free; what it returns or raises."""
        if self._closed:
            raise trio.ClosedResourceError("the idle threads have been shut down")
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
async def open_idle_threads(threads: int) -> AsyncIterator[IdleThreads]:
    """At most `threads` threads at idle priority, for the block's duration."""
    refused = threading.Event()
    executor = ThreadPoolExecutor(threads, thread_name_prefix="vpiska-idle",
                                  initializer=_lower_priority, initargs=(refused,))
    idle = IdleThreads(executor)
    try:
        yield idle
    finally:
        idle.close()
        with trio.CancelScope(shield=True):  # the threads end at once: no job is left
            await trio.to_thread.run_sync(executor.shutdown)


def _lower_priority(refused: threading.Event) -> None:
    """As each thread starts: SCHED_IDLE for this thread (0: the calling thread, on Linux)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as error:
        if not refused.is_set():
            refused.set()
            log.warning("idle threads: Linux refused SCHED_IDLE; suspected guessers' password "
                        "hashes compete with everyone's", extra={"error": str(error)})
