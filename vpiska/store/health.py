"""Whether the store answers, watched all the time: what a cluster node needs before it may go
on owning events.

A write to a MongoDB behind a frozen network path does not fail, it waits; a room whose owner
waits on such a write stalls, members on every node with it, for as long as the owner keeps
its leases. So the store is pinged every `interval`: a ping with no answer within `deadline`
(or one that fails) makes the store unreachable; the next ping answered makes it reachable
again. The ping runs in a worker thread that cannot be cancelled, so the deadline is kept by
waiting for the ping, not by cancelling it, and one ping is in flight at a time: a hung
database leaves one ping waiting, whose late answer is the first sign it is back.

The deadline is kept on the loop's own time (vpiska/loop_time.py): a ping answered in time,
whose answer a busy node (a reconnect storm) heard only after the deadline, does not make the
store unreachable. Nor does the node's own backlog: each store pings on a thread slot (and, for
sqlite, a connection) of its own, never queued behind the calls waiting for theirs.
"""

from __future__ import annotations

from typing import NoReturn

import trio

from vpiska.loop_time import measured
from vpiska.store.base import Store


class Ping:
    """One ping of the store: `done` once it is answered or failed, `failure` if it failed."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.failure: Exception | None = None


class StorePing:
    """One ping of the store in flight at a time, shared by everyone who asks meanwhile.

    A store call runs in a worker thread that cannot be cancelled, so a caller keeps its
    deadline by waiting for the ping, not by cancelling it: a hung database leaves one ping
    waiting, not one per probe or per round.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._in_flight: Ping | None = None

    def start(self, nursery: trio.Nursery) -> Ping:
        """The ping in flight, or a new one run in `nursery`."""
        if self._in_flight is None:
            self._in_flight = Ping()
            nursery.start_soon(self._ping, self._in_flight)
        return self._in_flight

    async def _ping(self, ping: Ping) -> None:
        try:
            await self._store.ping()
        except Exception as failed:  # any driver error: the store is not usable
            ping.failure = failed
        finally:
            self._in_flight = None
            ping.done.set()


class StoreHealth:
    """`reachable`: the last ping was answered in time (True until a ping says otherwise);
    `cause`: why not, when not. It logs nothing: whoever acts on a change says what it does.

    Resource handling: `run` owns the ping tasks and returns only when cancelled."""

    def __init__(self, store: Store, *, interval: float, deadline: float) -> None:
        self._pings = StorePing(store)
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
                ping = self._pings.start(nursery)
                await self._wait_in_time(ping)
                if not ping.done.is_set():
                    self._set(False, f"no answer within {self._deadline:g} s")
                    await ping.done.wait()
                if ping.failure is not None:
                    self._set(False, repr(ping.failure))
                else:
                    self._set(True, "")
                await trio.sleep(self._interval)

    async def _wait_in_time(self, ping: Ping) -> None:
        """Wait for `ping` until the deadline has passed on the loop's own time (trio's
        deadline may pass first on a late loop: then it waits on for what is left)."""
        async with measured() as span:
            while not ping.done.is_set():
                left = self._deadline - span.elapsed()
                if left <= 0:
                    return
                with trio.move_on_after(left):
                    await ping.done.wait()

    def _set(self, reachable: bool, cause: str) -> None:
        if reachable is self.reachable:
            return
        self.reachable = reachable
        self.cause = cause
        self._changed.set()
        self._changed = trio.Event()
