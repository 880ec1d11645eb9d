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
while it holds or waits for a slot, or after SUSPECT_GRANTS slots not forgiven lately (in
the current or the previous RECENT_SECONDS: when the counts start again, a guessing address
must not be taken for a newcomer). A user logs in once at a time with the right password,
and one who mistypes it once or twice is no suspect either; a guessing address sends its
attempts concurrently, or one after another and wrong. `Slot.suspect` tells the holder
which slots it holds (vpiska/auth.py runs a suspect's hash at the lowest priority). Both
kinds share the parties' counts: a guessing address's very first attempt is no suspect,
but among the others' waiters it goes after every party with less in flight and fewer
grants, however early it queued.

Memory: one count per party granted a slot in the current or the previous RECENT_SECONDS,
one entry per waiter.
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
# Slots granted and not forgiven lately (wrong passwords, sign-ups) that make a suspect.
SUSPECT_GRANTS = 3


class _Waiter:
    def __init__(self, party: str, order: int) -> None:
        self.party = party
        self.order = order
        self.granted = trio.Event()


class _Kind:
    """Slots of one kind (everyone's, or the suspects'): how many are free, who waits."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self.waiting: list[_Waiter] = []


class Slot:
    """One slot held; `forgive` it to take it off its party's grants. `suspect`: it is one of
    the suspects' slots (see the module's docstring)."""

    def __init__(self, suspect: bool) -> None:
        self.suspect = suspect
        self.forgiven = False

    def forgive(self) -> None:
        self.forgiven = True


class FairSlots:
    """`slots` concurrent holders at most (and `slots` suspects more with `suspects_apart`);
    see the module's docstring for who goes next.

    Waiters are few (one per request waiting for a hash), so choosing scans them.
    """

    def __init__(self, slots: int, *, suspects_apart: bool = False) -> None:
        self._kinds = {False: _Kind(slots)}
        if suspects_apart:
            self._kinds[True] = _Kind(slots)
        self._held: collections.Counter[str] = collections.Counter()
        self._granted: collections.Counter[str] = collections.Counter()
        self._granted_before: collections.Counter[str] = collections.Counter()  # previous counts
        self._granted_since = -math.inf
        self._counts_started = 0  # how many times the counts started again
        self._queued: collections.Counter[str] = collections.Counter()
        self._order = itertools.count()

    @asynccontextmanager
    async def slot(self, party: str) -> AsyncIterator[Slot]:
        suspect = True in self._kinds and self._is_suspect(party)
        kind = self._kinds[suspect]
        if kind.free and not kind.waiting:
            kind.free -= 1
            self._grant(party)
        else:
            waiter = _Waiter(party, next(self._order))
            kind.waiting.append(waiter)
            self._queued[party] += 1
            try:
                await waiter.granted.wait()
            except BaseException:
                if waiter.granted.is_set():  # granted as it was cancelled: pass it on
                    self._release(party, kind)
                else:
                    self._dequeue(kind, waiter)
                raise
        counts_started = self._counts_started
        held = Slot(suspect)
        try:
            yield held
        finally:
            if held.forgiven:
                self._uncount(party, self._counts_started - counts_started)
            self._release(party, kind)

    def _is_suspect(self, party: str) -> bool:
        self._start_counts_if_due()
        return bool(self._held[party] or self._queued[party]
                    or self._granted[party] + self._granted_before[party] >= SUSPECT_GRANTS)

    def _uncount(self, party: str, restarts: int) -> None:
        """Take a forgiven grant off its party's counts, the current ones or, once they have
        started again since, the previous ones (no longer counted for the order, still for
        suspicion)."""
        counts = {0: self._granted, 1: self._granted_before}.get(restarts)
        if counts is not None and counts[party]:
            counts[party] -= 1
            if not counts[party]:
                del counts[party]

    def _release(self, party: str, kind: _Kind) -> None:
        self._held[party] -= 1
        if not self._held[party]:
            del self._held[party]
        if not kind.waiting:
            kind.free += 1
            return
        chosen = min(kind.waiting, key=lambda w: (
            self._held[w.party], self._granted[w.party], self._queued[w.party], w.order))
        self._dequeue(kind, chosen)
        self._grant(chosen.party)
        chosen.granted.set()

    def _dequeue(self, kind: _Kind, waiter: _Waiter) -> None:
        kind.waiting.remove(waiter)
        self._queued[waiter.party] -= 1
        if not self._queued[waiter.party]:
            del self._queued[waiter.party]

    def _grant(self, party: str) -> None:
        self._start_counts_if_due()
        self._held[party] += 1
        self._granted[party] += 1

    def _start_counts_if_due(self) -> None:
        """Every RECENT_SECONDS the grants count from nothing again; the previous counts are
        kept one more period for suspicion, unless they are older than that."""
        now = trio.current_time()
        if now - self._granted_since < RECENT_SECONDS:
            return
        recent = now - self._granted_since < 2 * RECENT_SECONDS
        self._granted_before = self._granted if recent else collections.Counter()
        self._granted = collections.Counter()
        self._granted_since = now
        self._counts_started += 1
