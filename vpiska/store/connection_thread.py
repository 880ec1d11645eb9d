"""The thread that owns the sqlite store's connection: every call of the store runs there, one at
a time, in the order the calls were made.

Why not `trio.to_thread.run_sync` per call, as the other stores do. First, throughput on a
busy node: behind a CapacityLimiter(1), the next call could start only once the event loop
had handed the last one's result back and woken the next caller, so a node whose loop was
saturated (a reconnect storm: thousands of handshakes, each member's catch-up a read) made
one store call per turn of its loop, 10-35 ms each; its rooms' chat writes waited seconds
behind the catch-up reads, and joins waiting behind those writes timed out (1011). Here the
thread runs the queued calls back to back, whatever the loop is doing. Second, latency: a
chat line waits for its store write, so the hand-over to a thread and back is part of every
line's latency. Through trio's thread cache and a CapacityLimiter a round trip cost ~290 µs on
one core of the bench machine; through this thread ~150 µs (a trivial call, 3,000 in a row,
alternated). The thread lives as long as the store, so a call is a deque append and a
wake-up: no limiter, no thread cache, no cancel machinery per call. And the wake-up is a byte
written to a pipe: `os.write` lets go of the GIL, so the thread starts the call at once, where
the release of a lock (trio's thread cache) keeps the GIL and the thread waits until the
event loop next sleeps or the switch interval runs out. The result comes back as trio's own
threads bring theirs: through the run's token, which wakes the loop.

Resource handling: `start` starts the thread; `aclose` lets the calls made before it finish,
then ends the thread and closes the pipe. The thread is a daemon: a call that never returns
(a disk that hangs) cannot keep the process from exiting (vpiska/server.py's watchdog).

Error handling: what a call raises is raised to its caller. A call cannot be cancelled once made
(sqlite cannot be interrupted between a write and its commit from here): a caller cancelled
before it calls is not run; one cancelled while its call runs waits for the call to return, as
with `trio.to_thread.run_sync`'s default, and is cancelled at its next checkpoint. A call after
`aclose` raises trio.ClosedResourceError.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

_T = TypeVar("_T")
# A call: what to run, and whom to wake with its outcome. None in place of `fn`: end the thread.
_Call = tuple[Callable[..., Any] | None, tuple[Any, ...], trio.lowlevel.Task,
              trio.lowlevel.TrioToken]
# Wake-ups read at once: any number of them only says "the deque has calls".
_WAKE_UPS_READ = 4096


class ConnectionThread:
    def __init__(self, name: str) -> None:
        self._calls: deque[_Call] = deque()
        self._wake_read, self._wake_write = os.pipe()
        # A full pipe has wake-ups enough: the thread drains the deque whatever it reads.
        os.set_blocking(self._wake_write, False)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` in the thread, after every call made before it; its result or error."""
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled before it is made: not made
        if self._closed:
            raise trio.ClosedResourceError("the store's connection thread has ended")
        return await self._call(fn, args)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """End the thread once the calls made before this one have returned."""
        if self._closed:
            return
        self._closed = True
        await self._call(None, ())
        await trio.to_thread.run_sync(self._thread.join)  # it has returned, or is returning
        os.close(self._wake_read)
        os.close(self._wake_write)

    async def _call(self, fn: Callable[..., Any] | None, args: tuple[Any, ...]) -> Any:
        self._calls.append((fn, args, trio.lowlevel.current_task(),
                            trio.lowlevel.current_trio_token()))
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")
        return await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)  # the call runs on: wait for its outcome

    def _work(self) -> None:
        while True:
            os.read(self._wake_read, _WAKE_UPS_READ)
            while self._calls:
                fn, args, task, token = self._calls.popleft()
                result = outcome.Value(None) if fn is None else outcome.capture(fn, *args)
                with contextlib.suppress(trio.RunFinishedError):  # nobody left to tell
                    token.run_sync_soon(trio.lowlevel.reschedule, task, result)
                if fn is None:
                    return
