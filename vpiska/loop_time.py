"""Time as this process's own event loop kept it while it waited on something: to tell "my
dependency does not answer" from "I was too busy to hear its answer".

A node saturated by a reconnect storm (thousands of handshakes at once) wakes its tasks late:
a 2 s deadline on a store ping, or a 1 s timeout on a Redis call, passes while the answer sits
unread, and the node took its store or Redis for unreachable, stepped aside and closed every
socket, feeding the storm (docs/reconnect-storm.md). While a wait is measured (`measured`), a
task ticks every TICK_SECONDS and counts each tick as one tick, however late it woke: the
span's `elapsed` runs as the loop's time would if the loop were on time. A deadline judged on
it passes only for a dependency that is really slow; a loop that is late stretches it by its
own lateness. A loop on time loses a few milliseconds a tick to scheduling, so a real outage
is still seen within its bound. Nothing ticks between waits: an idle process stays idle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

# How often a measured wait looks at the loop: each wake-up counts at most this much.
TICK_SECONDS = 0.05


class LoopSpan:
    """A measured wait: `elapsed` on the loop's own time, `lag` how much later than on time
    the loop ran meanwhile."""

    def __init__(self) -> None:
        self._started = self._last_tick = trio.current_time()
        self._counted = 0.0

    def elapsed(self) -> float:
        return self._counted + min(trio.current_time() - self._last_tick, TICK_SECONDS)

    def lag(self) -> float:
        return max(0.0, trio.current_time() - self._started - self.elapsed())

    async def _tick(self) -> None:
        while True:
            await trio.sleep(TICK_SECONDS)
            self._counted = self.elapsed()
            self._last_tick = trio.current_time()


@asynccontextmanager
async def measured() -> AsyncIterator[LoopSpan]:
    """A span measured from now until the block ends.

    Resource handling: the ticking task lives in a nursery of the block's own and ends with
    it. Error handling: an exception of the block escapes as it is, not in a group."""
    span = LoopSpan()
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(span._tick)
        try:
            yield span
        except Exception as error:  # raised again below, outside the nursery
            failure = error
        finally:
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
