"""The password hash slots go to the party holding the fewest (vpiska/fair_slots.py)."""

from __future__ import annotations

import trio
import trio.testing

from vpiska.fair_slots import RECENT_SECONDS, SUSPECT_WRONG, FairSlots


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


async def test_forgiven_slots_do_not_count_against_their_party(
        autojump_clock: trio.abc.Clock) -> None:
    """A user who logged in 10 times (right passwords, forgiven) still goes before a guesser
    granted 3 wrong guesses in the same minute; counted, the user would go after it."""
    slots = FairSlots(1)
    order: list[str] = []

    async def hash_for(party: str, name: str, right: bool) -> None:
        async with slots.slot(party) as slot:
            order.append(name)
            await trio.sleep(0.035)
            if right:
                slot.forgive()

    for _ in range(10):
        await hash_for("user", "u", True)
    for _ in range(3):
        await hash_for("guesser", "g", False)
    order.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hash_for, "other", "first", False)  # holds the one slot
        await trio.testing.wait_all_tasks_blocked()
        for name in ("g1", "g2"):  # queued before the user
            nursery.start_soon(hash_for, "guesser", name, False)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hash_for, "user", "u", True)
    assert order == ["first", "u", "g1", "g2"]


HASH_SECONDS = 0.035


async def test_users_wait_at_most_one_hash_while_twenty_addresses_guess_at_full_speed(
        autojump_clock: trio.abc.Clock) -> None:
    """Issue 20's storm on the hash slots alone, in virtual time: 20 addresses keep 10 hashes
    each queued, without any rate limit, while 20 users log in every 2 s from addresses of
    their own. No login waits longer than one hash for its slot (with a FIFO queue of 200:
    100 hashes, 3.5 s)."""
    slots = FairSlots(2)
    waits: list[float] = []
    guessed = 0

    async def guess(party: str) -> None:
        nonlocal guessed
        while True:
            async with slots.slot(party):
                await trio.sleep(HASH_SECONDS)
                guessed += 1

    async def log_in(party: str) -> None:
        for _ in range(10):
            asked = trio.current_time()
            async with slots.slot(party):
                waits.append(trio.current_time() - asked)
                await trio.sleep(HASH_SECONDS)
            await trio.sleep(2 - (trio.current_time() - asked))

    async with trio.open_nursery() as nursery:
        for address in range(20):
            for _ in range(10):
                nursery.start_soon(guess, f"10.0.1.{address}")
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as users:
            for user in range(20):
                users.start_soon(log_in, f"10.0.2.{user}")
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert len(waits) == 200
    assert max(waits) <= HASH_SECONDS
    assert guessed > 900  # the guessers had the slots the rest of the time


async def guess_wrong(slots: FairSlots, party: str) -> bool:
    """One wrong password's slot; whether it was a suspect's."""
    async with slots.slot(party) as slot:
        slot.wrong()
        return slot.suspect


async def test_suspects_wait_for_slots_of_their_own() -> None:
    """After SUSPECT_WRONG wrong passwords a party's hashes take the suspects' slots, and a
    user waits for everyone's slots alone, never behind the suspects' queue."""
    slots = FairSlots(1, suspects_apart=True)
    for _ in range(SUSPECT_WRONG):
        assert not await guess_wrong(slots, "guesser")
    suspected: dict[str, bool] = {}
    done = {name: trio.Event() for name in ("g1", "g2", "u")}

    async def hold(party: str, name: str) -> None:
        async with slots.slot(party) as slot:
            suspected[name] = slot.suspect
            await done[name].wait()

    async with trio.open_nursery() as nursery:
        for name in ("g1", "g2"):
            nursery.start_soon(hold, "guesser", name)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "user", "u")
        await trio.testing.wait_all_tasks_blocked()
        assert suspected == {"g1": True, "u": False}  # g2 waits for g1's slot, u for nothing
        for event in done.values():
            event.set()
    assert suspected["g2"] is True


async def test_attempts_sent_at_once_move_to_the_suspects_slots_once_one_is_wrong_enough(
        ) -> None:
    """A guessing address sends its attempts before any is known wrong: they wait for
    everyone's slot, and go to the suspects' as soon as the address is a suspect, leaving
    everyone's slot to a user."""
    slots = FairSlots(1, suspects_apart=True)
    for _ in range(SUSPECT_WRONG - 1):
        await guess_wrong(slots, "guesser")
    suspected: dict[str, bool] = {}
    done = {name: trio.Event() for name in ("g0", "g1", "g2", "u")}

    async def hold(party: str, name: str, wrong: bool) -> None:
        async with slots.slot(party) as slot:
            suspected[name] = slot.suspect
            await done[name].wait()
            if wrong:
                slot.wrong()

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(hold, "guesser", f"g{n}", True)
            await trio.testing.wait_all_tasks_blocked()
        assert suspected == {"g0": False}  # g1 and g2 wait for everyone's slot
        done["g0"].set()  # the third wrong one
        await trio.testing.wait_all_tasks_blocked()
        assert suspected == {"g0": False, "g1": True}  # g2 waits for the suspects' slot
        nursery.start_soon(hold, "user", "u", False)
        await trio.testing.wait_all_tasks_blocked()
        assert suspected["u"] is False  # everyone's slot was free for it
        for event in done.values():
            event.set()
    assert suspected["g2"] is True


async def test_a_guesser_stays_suspect_after_the_counts_start_again_but_not_for_ever(
        autojump_clock: trio.abc.Clock) -> None:
    slots = FairSlots(1, suspects_apart=True)
    for _ in range(SUSPECT_WRONG):
        assert not await guess_wrong(slots, "guesser")
    assert await guess_wrong(slots, "guesser")
    await trio.sleep(RECENT_SECONDS + 1)
    assert await guess_wrong(slots, "guesser")  # remembered from the previous counts
    await trio.sleep(3 * RECENT_SECONDS)
    assert not await guess_wrong(slots, "guesser")


async def test_right_passwords_sign_ups_and_two_mistakes_make_no_suspect() -> None:
    """Many users behind one address (a carrier's NAT) logging in and signing up at once,
    one of them mistyping twice: none of their hashes waits for the suspects' slots."""
    slots = FairSlots(1, suspects_apart=True)
    suspected: list[bool] = []

    async def hash_for(right: bool | None) -> None:
        async with slots.slot("nat") as slot:
            suspected.append(slot.suspect)
            await trio.testing.wait_all_tasks_blocked()
            if right:
                slot.forgive()
            elif right is False:
                slot.wrong()

    async with trio.open_nursery() as nursery:
        for right in (True, None, False, True, None, False, True, None):
            nursery.start_soon(hash_for, right)
    assert suspected == [False] * 8
    assert await guess_wrong(slots, "nat") is False  # the third wrong one
    assert await guess_wrong(slots, "nat") is True
