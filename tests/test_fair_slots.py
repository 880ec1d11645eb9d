"""The password hash slots go to the party holding the fewest (vpiska/fair_slots.py)."""

from __future__ import annotations

import trio
import trio.testing

from vpiska.fair_slots import RECENT_SECONDS, SUSPECT_GRANTS, FairSlots


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


async def test_suspects_wait_for_slots_of_their_own() -> None:
    """A party with a slot held is a suspect: its next hashes take the suspects' slots, and a
    user waits for everyone's slot alone, never behind the suspects' queue."""
    slots = FairSlots(1, suspects_apart=True)
    suspected: dict[str, bool] = {}
    done = {name: trio.Event() for name in ("g1", "g2", "g3", "u")}

    async def hold(party: str, name: str) -> None:
        async with slots.slot(party) as slot:
            suspected[name] = slot.suspect
            await done[name].wait()

    async with trio.open_nursery() as nursery:
        for name in ("g1", "g2", "g3"):
            nursery.start_soon(hold, "guesser", name)
            await trio.testing.wait_all_tasks_blocked()
        assert suspected == {"g1": False, "g2": True}  # g3 waits for g2's slot
        nursery.start_soon(hold, "user", "u")
        await trio.testing.wait_all_tasks_blocked()
        done["g1"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert suspected == {"g1": False, "g2": True, "u": False}  # g3 still waits
        for name in ("g2", "u", "g3"):
            done[name].set()
    assert suspected["g3"] is True


async def test_a_guessers_first_attempt_goes_after_the_users_waiting_with_it() -> None:
    """A guessing address's first attempt is no suspect, but queued with everyone it goes
    after a user: the guesser's other attempts, on the suspects' slots, count against it."""
    slots = FairSlots(1, suspects_apart=True)
    order: list[str] = []
    done = {name: trio.Event() for name in ("other", "g0", "g1", "g2", "u")}

    async def hold(party: str, name: str) -> None:
        async with slots.slot(party):
            order.append(name)
            await done[name].wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "other", "other")  # holds everyone's slot
        await trio.testing.wait_all_tasks_blocked()
        for n in range(3):  # g0 waits for everyone's slot, g1 holds the suspects', g2 waits
            nursery.start_soon(hold, "guesser", f"g{n}")
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "user", "u")
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["other", "g1"]
        done["other"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["other", "g1", "u"]  # before g0, which queued first
        for event in done.values():
            event.set()


async def test_a_guesser_stays_suspect_after_the_counts_start_again_but_not_for_ever(
        autojump_clock: trio.abc.Clock) -> None:
    slots = FairSlots(1, suspects_apart=True)

    async def suspected(party: str) -> bool:
        async with slots.slot(party) as slot:
            return slot.suspect

    for _ in range(SUSPECT_GRANTS):  # wrong guesses: granted, not forgiven
        assert not await suspected("guesser")
    assert await suspected("guesser")
    await trio.sleep(RECENT_SECONDS + 1)
    assert not await suspected("user")  # the counts start again here
    assert await suspected("guesser")  # remembered from the previous counts
    await trio.sleep(3 * RECENT_SECONDS)
    assert not await suspected("guesser")


async def test_a_forgiven_login_makes_no_suspect_even_across_a_new_count(
        autojump_clock: trio.abc.Clock) -> None:
    slots = FairSlots(1, suspects_apart=True)

    async def log_in(party: str, seconds: float) -> bool:
        async with slots.slot(party) as slot:
            await trio.sleep(seconds)
            slot.forgive()
            return slot.suspect

    async def suspected(party: str) -> bool:
        async with slots.slot(party) as slot:
            return slot.suspect

    assert not await log_in("user", HASH_SECONDS)
    assert not await log_in("user", HASH_SECONDS)  # the first was forgiven
    await trio.sleep(RECENT_SECONDS - 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log_in, "user", 2.0)  # granted before the counts start again
        await trio.sleep(1.5)
        assert not await suspected("other")  # waits for the user's slot; counts start again
    assert not await log_in("user", HASH_SECONDS)  # forgiven in the previous counts


async def test_a_user_who_mistypes_twice_is_no_suspect() -> None:
    slots = FairSlots(1, suspects_apart=True)
    suspected: list[bool] = []
    for right in (False, False, True, False):  # the third wrong one is not yet known
        async with slots.slot("user") as slot:
            suspected.append(slot.suspect)
            if right:
                slot.forgive()
    assert suspected == [False] * 4
    async with slots.slot("user") as slot:
        assert slot.suspect  # after a third wrong one
