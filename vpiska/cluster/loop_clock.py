"""Time as this node's own event loop kept it: to tell "my dependency does not answer" from
"I was too busy to hear its answer".

A node saturated by a reconnect storm (thousands of handshakes at once) wakes its tasks late:
a 2 s deadline on a store ping, or a 1 s timeout on a Redis call, passes while the answer sits
unread, and the node took its store or Redis for unreachable, stepped aside and closed every
socket, feeding the storm (docs/reconnect-storm.md). `LoopClock` ticks every `TICK_SECONDS`
and counts each tick as one tick, however late it woke: its time runs as the loop's would if
it were on time. A deadline kept on it passes only for a dependency that is really slow; a
loop that is late stretches it by its own lateness. A loop that is on time loses at most a few
milliseconds a tick to scheduling, so a real outage is still seen within its bound.
"""

from __future__ import annotations

from typing import NoReturn

import trio

# How often the clock looks at the loop: each wake-up counts at most this much, however late.
TICK_SECONDS = 0.05


class LoopClock:
    """`now()`: seconds on the loop's own time. Before `run`, and for callers outside a node,
    it is trio's clock.

    Resource handling: `run` returns only when cancelled."""

    def __init__(self) -> None:
        self._counted: float | None = None  # the clock at the last tick
        self._last_tick = 0.0  # trio's time at the last tick

    def now(self) -> float:
        real = trio.current_time()
        if self._counted is None:
            return real
        return self._counted + min(real - self._last_tick, TICK_SECONDS)

    def lag_since(self, real_start: float, start: float) -> float:
        """How much later than on time the loop was since (`real_start` on trio's clock,
        `start` on this one)."""
        return max(0.0, (trio.current_time() - real_start) - (self.now() - start))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> NoReturn:
        self._counted = self._last_tick = trio.current_time()
        task_status.started()
        while True:
            await trio.sleep(TICK_SECONDS)
            self._counted = self.now()
            self._last_tick = trio.current_time()
