"""StoreHealth: a store whose ping goes unanswered past the deadline, or fails, is unreachable
until a ping is answered again; one ping is in flight at a time, however long it hangs."""

from __future__ import annotations

from typing import Any, cast

import trio
import trio.testing

from vpiska.store import Store
from vpiska.store.health import StoreHealth

INTERVAL = 1.0
DEADLINE = 2.0


class Pinged:
    """A store that is only pinged: each ping waits for `answer` and then does what it says
    (nothing: answered; an exception: failed)."""

    def __init__(self) -> None:
        self.pings = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.answer = trio.Event()
        self.answer.set()
        self.failure: Exception | None = None

    async def ping(self) -> None:
        self.pings += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.answer.wait()
            if self.failure is not None:
                raise self.failure
        finally:
            self.in_flight -= 1

    def hang(self) -> None:
        self.answer = trio.Event()


async def watched(nursery: trio.Nursery, store: Pinged) -> StoreHealth:
    health = StoreHealth(cast(Store, store), interval=INTERVAL, deadline=DEADLINE)
    await nursery.start(health.run)
    return health


async def test_a_ping_unanswered_past_the_deadline_makes_the_store_unreachable(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    store = Pinged()
    health = await watched(nursery, store)
    await trio.sleep(5 * INTERVAL)
    assert health.reachable
    store.hang()
    hung_at = trio.current_time()
    await health.wait_until(reachable=False)
    # The ping that hangs started within an interval of the hang; the deadline runs from it.
    assert trio.current_time() - hung_at <= INTERVAL + DEADLINE
    assert "no answer within 2 s" in health.cause
    await trio.sleep(60)  # a long outage: still one ping waiting, not one per interval
    assert store.most_in_flight == 1
    assert not health.reachable


async def test_the_late_answer_of_the_ping_that_hung_makes_it_reachable_again(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    store = Pinged()
    health = await watched(nursery, store)
    store.hang()
    await health.wait_until(reachable=False)
    await trio.sleep(30)
    healed_at = trio.current_time()
    store.answer.set()
    await health.wait_until(reachable=True)
    assert trio.current_time() == healed_at  # at once: no new ping waited for


async def test_a_failing_ping_makes_the_store_unreachable_at_once(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    store = Pinged()
    health = await watched(nursery, store)
    await trio.testing.wait_all_tasks_blocked()
    store.failure = ConnectionResetError("reset by peer")
    failed_at = trio.current_time()
    await health.wait_until(reachable=False)
    assert trio.current_time() - failed_at <= INTERVAL  # the next ping, not a deadline later
    assert "reset by peer" in health.cause
    store.failure = None
    await health.wait_until(reachable=True)


async def test_a_slow_answer_within_the_deadline_changes_nothing(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    store = Pinged()
    health = await watched(nursery, store)
    changes = 0

    async def count_changes() -> None:
        nonlocal changes
        while True:
            await health.wait_until(reachable=not health.reachable)
            changes += 1

    nursery.start_soon(count_changes)
    for _ in range(10):
        store.hang()
        await trio.sleep(DEADLINE * 0.9)
        store.answer.set()
        await trio.sleep(INTERVAL)
    assert changes == 0
    assert health.reachable


class HeardLate(Pinged):
    """A store whose answer, once given, takes the loop two more steps to reach the pinger (as
    a worker thread's result does); `asked` is set at each ping."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = trio.Event()

    async def ping(self) -> None:
        self.asked.set()
        self.asked = trio.Event()
        await super().ping()
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()


async def test_a_ping_answered_in_time_but_heard_late_by_a_busy_loop_changes_nothing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    store = HeardLate()
    health = await watched(nursery, store)
    unreachable: list[str] = []

    async def watch() -> None:
        await health.wait_until(reachable=False)
        unreachable.append(health.cause)

    nursery.start_soon(watch)
    for _ in range(10):
        store.hang()
        await store.asked.wait()
        store.answer.set()  # answered at once; then the loop is busy elsewhere a long while
        autojump_clock.jump(10 * DEADLINE)
        await trio.sleep(INTERVAL)
    assert unreachable == []
    assert store.pings >= 10

