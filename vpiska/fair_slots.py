"""A few slots shared fairly among parties: the one served least lately goes next.

The password hash slots (PASSWORD_HASH_CONCURRENCY) are few and each hash is slow (~35 ms).
Under a FIFO limiter, 20 guessing addresses with 30 admitted attempts each queued 600 hashes,
and a user logging in from elsewhere waited behind all of them (seconds). Here a freed slot
goes to the waiting party holding the fewest slots, then the one granted the fewest slots in
the current minute, then the one with the fewest waiting, then the one that has waited
longest. A user's single login has been granted little lately and queues one hash, so it
starts as soon as one slot frees, however many hashes the guessing addresses have queued: it
waits at most about one hash. Each party's own waiters keep their order.

A slot whose holder calls `Slot.forgive` (a login whose password was right) does not count
among its party's grants: a user logging in every 2 s is granted as often as a guesser at the
sign-in rate (30 a minute), and counted alike they tied, so the user's login queued behind
every guessing address's hashes whenever the hashes were short of CPU. Forgiven, a user who
logs in is never behind an address that has been guessing.

With `suspects_apart`, the parties that look like guessers wait for slots of their own
(`slots` more), so that nobody else ever waits behind their hashes: a party is a *suspect*
after SUSPECT_WRONG slots marked `Slot.wrong` (wrong passwords) in the current or the
previous RECENT_SECONDS (when the counts start again, a guessing address must not be taken
for a newcomer). A user who mistypes once or twice is no suspect, nor are many users logging
in or signing up at once behind one address (a carrier's NAT). Whether a party is a suspect
is decided as a slot is granted, so the attempts a guessing address sent at once, before
any was known wrong, move to the suspects' slots as soon as it is one. `Slot.suspect` tells
the holder which slots it holds (vpiska/auth.py runs a suspect's hash at the lowest
priority). Both kinds share the parties' counts, so among everyone's waiters a user still
goes before a guessing address's first attempts.

Memory: one count per party granted a slot in the current RECENT_SECONDS and one per party
with a wrong one in the current or the previous, one entry per waiter.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

# How long what a party was granted counts against it.
RECENT_SECONDS = 60.0
# Wrong passwords lately that make a suspect.
SUSPECT_WRONG = 3


class _Waiter:
    def __init__(self, party: str, order: int) -> None:
        self.party = party
        self.order = order
        self.suspect = False  # which slot it was granted
        self.granted = trio.Event()


class Slot:
    """One slot held; `forgive` it to take it off its party's grants, mark it `wrong` to
    count it among its party's wrong passwords. `suspect`: it is one of the suspects' slots
    (see the module's docstring)."""

    def __init__(self, suspect: bool) -> None:
        self.suspect = suspect
        self.forgiven = False
        self.is_wrong = False

    def forgive(self) -> None:
        self.forgiven = True

    def wrong(self) -> None:
        self.is_wrong = True


class FairSlots:
    """`slots` concurrent holders at most (and `slots` suspects more with `suspects_apart`);
    see the module's docstring for who goes next.

    Waiters are few (one per request waiting for a hash), so choosing scans them.
    """

    def __init__(self, slots: int, *, suspects_apart: bool = False) -> None:
        self._free = {False: slots}  # by kind: everyone's (False), the suspects' (True)
        if suspects_apart:
            self._free[True] = slots
        self._waiting: list[_Waiter] = []
        self._held: collections.Counter[str] = collections.Counter()
        self._granted: collections.Counter[str] = collections.Counter()
        self._wrong: collections.Counter[str] = collections.Counter()
        self._wrong_before: collections.Counter[str] = collections.Counter()
        self._counted_since = -math.inf
        self._queued: collections.Counter[str] = collections.Counter()
        self._order = itertools.count()

    @asynccontextmanager
    async def slot(self, party: str) -> AsyncIterator[Slot]:
        waiter = _Waiter(party, next(self._order))
        self._waiting.append(waiter)
        self._queued[party] += 1
        self._dispatch()
        if not waiter.granted.is_set():
            try:
                await waiter.granted.wait()
            except BaseException:
                if waiter.granted.is_set():  # granted as it was cancelled: pass it on
                    self._release(party, waiter.suspect)
                else:
                    self._dequeue(waiter)
                raise
        counted_since = self._counted_since
        held = Slot(waiter.suspect)
        try:
            yield held
        finally:
            self._start_counts_if_due()
            if held.forgiven and self._counted_since == counted_since:
                self._granted[party] -= 1  # not when the counts have started again since
                if not self._granted[party]:
                    del self._granted[party]
            if held.is_wrong:
                self._wrong[party] += 1
            self._release(party, waiter.suspect)

    def _release(self, party: str, suspect: bool) -> None:
        self._held[party] -= 1
        if not self._held[party]:
            del self._held[party]
        self._free[suspect] += 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Give each free slot to the waiter that goes next among those of its kind."""
        self._start_counts_if_due()
        for suspect in self._free:
            while self._free[suspect]:
                mine = [w for w in self._waiting if self._is_suspect(w.party) == suspect]
                if not mine:
                    break
                chosen = min(mine, key=lambda w: (
                    self._held[w.party], self._granted[w.party], self._queued[w.party],
                    w.order))
                self._dequeue(chosen)
                self._free[suspect] -= 1
                self._held[chosen.party] += 1
                self._granted[chosen.party] += 1
                chosen.suspect = suspect
                chosen.granted.set()

    def _is_suspect(self, party: str) -> bool:
        return True in self._free and (
            self._wrong[party] + self._wrong_before[party] >= SUSPECT_WRONG)

    def _dequeue(self, waiter: _Waiter) -> None:
        self._waiting.remove(waiter)
        self._queued[waiter.party] -= 1
        if not self._queued[waiter.party]:
            del self._queued[waiter.party]

    def _start_counts_if_due(self) -> None:
        """Every RECENT_SECONDS the counts start from nothing again; the wrong passwords of
        the previous period still count for suspicion, unless they are older than that."""
        now = trio.current_time()
        if now - self._counted_since < RECENT_SECONDS:
            return
        recent = now - self._counted_since < 2 * RECENT_SECONDS
        self._wrong_before = self._wrong if recent else collections.Counter()
        self._wrong = collections.Counter()
        self._granted = collections.Counter()
        self._counted_since = now
