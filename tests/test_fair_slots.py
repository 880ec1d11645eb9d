"""The password hash slots go to the party holding the fewest (vpiska/fair_slots.py)."""

from __future__ import annotations

import trio
import trio.testing

from vpiska.fair_slots import RECENT_SECONDS, FairSlots


async def test_a_party_holding_no_slot_goes_before_a_busy_partys_queue() -> None:
    slots = FairSlots(2)
    order: list[str] = []
    done = {name: trio.Event() for name in ("a1", "a2", "a3", "a4", "a5", "b1")}

    async def hold(party: str, name: str) -> None:
        async with slots.slot(party):
            order.append(name)
            await done[name].wait()

    async with trio.open_nursery() as nursery:
        for name in ("a1", "a2", "a3", "a4", "a5"):  # a guesser: 2 holding, 3 queued
            nursery.start_soon(hold, "guesser", name)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "user", "b1")  # arrives last
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a1", "a2"]
        done["a1"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a1", "a2", "b1"]  # first in, though it came after a3..a5
        for name in ("a2", "b1", "a3", "a4", "a5"):
            done[name].set()
            await trio.testing.wait_all_tasks_blocked()
    assert order == ["a1", "a2", "b1", "a3", "a4", "a5"]  # the guesser's own in order


async def test_a_cancelled_waiter_leaves_the_queue_to_the_next() -> None:
    slots = FairSlots(1)
    got: list[str] = []
    release = trio.Event()
    impatient = trio.CancelScope()

    async def hold(name: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            async with slots.slot(name):
                got.append(name)
                await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "impatient", impatient)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "patient")
        await trio.testing.wait_all_tasks_blocked()
        impatient.cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert got == ["first", "patient"]


async def test_among_parties_holding_nothing_the_one_served_least_lately_goes_first(
        autojump_clock: trio.abc.Clock) -> None:
    slots = FairSlots(1)
    order: list[str] = []

    async def hash_for(party: str, name: str) -> None:
        async with slots.slot(party):
            order.append(name)
            await trio.sleep(0.035)  # a hash

    async with trio.open_nursery() as nursery:
        for n in range(3):  # queued first: the guesser's turn comes, then the user's
            nursery.start_soon(hash_for, "guesser", f"g{n}")
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hash_for, "user", "u")
    assert order == ["g0", "u", "g1", "g2"]
    # A minute later the guesser's 3 grants count no more: after the user's turn it goes
    # before the user's second hash (counted, the user's 2 would have gone first).
    await trio.sleep(RECENT_SECONDS)
    order.clear()
    async with trio.open_nursery() as nursery:
        for party in ("user", "guesser", "user"):
            nursery.start_soon(hash_for, party, party)
            await trio.testing.wait_all_tasks_blocked()
    assert order == ["user", "guesser", "user"]
