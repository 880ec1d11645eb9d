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

Memory: one count per party granted a slot since the counts last started again from nothing
(every RECENT_SECONDS), one entry per waiter.
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


class _Waiter:
    def __init__(self, party: str, order: int) -> None:
        self.party = party
        self.order = order
        self.granted = trio.Event()


class Slot:
    """One slot held; `forgive` it to take it off its party's grants."""

    def __init__(self) -> None:
        self.forgiven = False

    def forgive(self) -> None:
        self.forgiven = True


class FairSlots:
    """`slots` concurrent holders at most; see the module's docstring for who goes next.

    Waiters are few (one per request waiting for a hash), so choosing scans them.
    """

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._held: collections.Counter[str] = collections.Counter()
        self._granted: collections.Counter[str] = collections.Counter()
        self._granted_since = -math.inf
        self._waiting: list[_Waiter] = []
        self._queued: collections.Counter[str] = collections.Counter()
        self._order = itertools.count()

    @asynccontextmanager
    async def slot(self, party: str) -> AsyncIterator[Slot]:
        if self._free and not self._waiting:
            self._free -= 1
            self._grant(party)
        else:
            waiter = _Waiter(party, next(self._order))
            self._waiting.append(waiter)
            self._queued[party] += 1
            try:
                await waiter.granted.wait()
            except BaseException:
                if waiter.granted.is_set():  # granted as it was cancelled: pass it on
                    self._release(party)
                else:
                    self._dequeue(waiter)
                raise
        granted_since = self._granted_since
        held = Slot()
        try:
            yield held
        finally:
            if held.forgiven and self._granted_since == granted_since:
                self._granted[party] -= 1  # not when the counts have started again since
                if not self._granted[party]:
                    del self._granted[party]
            self._release(party)

    def _release(self, party: str) -> None:
        self._held[party] -= 1
        if not self._held[party]:
            del self._held[party]
        if not self._waiting:
            self._free += 1
            return
        chosen = min(self._waiting, key=lambda w: (
            self._held[w.party], self._granted[w.party], self._queued[w.party], w.order))
        self._dequeue(chosen)
        self._grant(chosen.party)
        chosen.granted.set()

    def _dequeue(self, waiter: _Waiter) -> None:
        self._waiting.remove(waiter)
        self._queued[waiter.party] -= 1
        if not self._queued[waiter.party]:
            del self._queued[waiter.party]

    def _grant(self, party: str) -> None:
        now = trio.current_time()
        if now - self._granted_since >= RECENT_SECONDS:
            self._granted.clear()
            self._granted_since = now
        self._held[party] += 1
        self._granted[party] += 1
