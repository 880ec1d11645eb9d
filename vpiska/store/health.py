"""Whether the store answers, watched all the time: what a cluster node needs before it may go
on owning events.

A write to a MongoDB behind a frozen network path does not fail, it waits; a room whose owner
waits on such a write stalls, members on every node with it, for as long as the owner keeps
its leases. So the store is pinged every `interval`: a ping with no answer within `deadline`
(or one that fails) makes the store unreachable; the next ping answered makes it reachable
again. The ping runs in a worker thread that cannot be cancelled, so the deadline is kept by
waiting for the ping, not by cancelling it, and one ping is in flight at a time: a hung
database leaves one ping waiting, whose late answer is the first sign it is back.
"""

from __future__ import annotations

from typing import NoReturn

import trio

from vpiska.store.base import Store


class StoreHealth:
    """`reachable`: the last ping was answered in time (True until a ping says otherwise);
    `cause`: why not, when not. It logs nothing: whoever acts on a change says what it does.

    Resource handling: `run` owns the ping tasks and returns only when cancelled."""

    def __init__(self, store: Store, *, interval: float, deadline: float) -> None:
        self._store = store
        self._interval = interval
        self._deadline = deadline
        self.reachable = True
        self.cause = ""
        self._changed = trio.Event()

    async def wait_until(self, *, reachable: bool) -> None:
        """Return once `reachable` is what is asked (at once if it is already)."""
        while self.reachable is not reachable:
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> NoReturn:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                ping = _Ping()
                nursery.start_soon(self._ping, ping)
                with trio.move_on_after(self._deadline):
                    await ping.done.wait()
                if not ping.done.is_set():
                    self._set(False, f"no answer within {self._deadline:g} s")
                    await ping.done.wait()
                if ping.failure is not None:
                    self._set(False, repr(ping.failure))
                else:
                    self._set(True, "")
                await trio.sleep(self._interval)

    async def _ping(self, ping: _Ping) -> None:
        try:
            await self._store.ping()
        except Exception as failed:  # any driver error: the store is not usable
            ping.failure = failed
        finally:
            ping.done.set()

    def _set(self, reachable: bool, cause: str) -> None:
        if reachable is self.reachable:
            return
        self.reachable = reachable
        self.cause = cause
        self._changed.set()
        self._changed = trio.Event()


class _Ping:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.failure: Exception | None = None
