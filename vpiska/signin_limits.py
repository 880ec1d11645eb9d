"""Sign-in abuse limits: what a password guesser or a sign-up flood gets, before any argon2 time.

Two rules (API.md, "Sign-in abuse"), each refused with `TooManyRequests`:

- **Per address.** Sign-ups and logins from one client address are admitted at
  SIGNIN_RATE_PER_MINUTE: a burst of that many, then one every 60/n seconds (GCRA, the token
  bucket in one number per address). 0 turns this rule off, for load tests.
- **Per phone.** A login to a phone that had 5 wrong passwords in the last 15 minutes is
  refused, from any address, until the oldest of them is 15 minutes old. So that 200 guesses
  arriving at once cannot all be verified before the 5th failure is counted, a login *claims* a
  place among the 5 before its password is verified: a wrong password keeps its place, anything
  else (the right password, an unknown phone, a store failure) gives it back. At most 5
  verifications per phone per 15 minutes, however concurrent the guesses. A successful login
  does not clear the other failures: the rightful owner logging in does not hand a guesser
  5 more tries (the owner is in; only the next attempts wait). A place held by a check still
  running is no wrong password yet: a login that finds every place taken while checks of its
  phone run in this process waits for one of them to end and asks again, so the owner's
  devices logging in at once are all let in, and 200 guesses at once still get 5 checks. (A
  place held by a check on another node is not waited for: such a login is refused.)

A refused attempt costs one counter step and no password hash, and is answered after
`refusal_pause` seconds (SIGNIN_REFUSAL_PAUSE_MS). A guesser resends each refused attempt as
soon as it is answered: answered at once, 200 connections kept the event loop busy with
thousands of refusals a second, and every user's login waited behind them (Little's law: 200
requests in flight, each some 0.4 ms of the loop, is 80 ms before a login is even read). A
paused refusal is a sleeping task: each connection makes one attempt per pause, and a client
that waits for `Retry-After` (at least a second) loses nothing.

The counters live in `SigninCounters`: `LocalCounters` here, in this process, for one node;
in a cluster the nodes share them through Redis (vpiska/cluster/signin_counters.py).
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

import trio

from vpiska import metrics
from vpiska.errors import TooManyRequests

WRONG_PASSWORDS = 5
WRONG_PASSWORD_WINDOW_SECONDS = 15 * 60
# Addresses and phones whose counters one process keeps at most (LocalCounters): a flood of
# new addresses or phones costs bounded memory. Least recently used ones go first.
MAX_TRACKED = 100_000

_V = TypeVar("_V")
_BY_ADDRESS = metrics.SIGNIN_REFUSED.labels(limit="address")
_BY_PHONE = metrics.SIGNIN_REFUSED.labels(limit="phone")


class SigninCounters(Protocol):
    """Where the limits' counters live. Every answer is 0 (admitted, counted) or the seconds
    until an attempt may pass (refused, not counted)."""

    async def take_attempt(self, address: str, per_minute: int) -> float:
        """Count an attempt from `address` if it is within `per_minute`."""

    async def claim_guess(self, phone: str, claim: str) -> float:
        """Take a place for `claim` among the phone's WRONG_PASSWORDS, if one is free."""

    async def release_guess(self, phone: str, claim: str) -> None:
        """Give `claim`'s place back: the attempt was not a wrong password."""


class Guess:
    """One login's place among its phone's wrong passwords; kept only if `wrong` is called."""

    def __init__(self) -> None:
        self.is_wrong = False

    def wrong(self) -> None:
        self.is_wrong = True


class _Checks:
    """The password checks of one phone running in this process; `ended` is set when one ends."""

    def __init__(self) -> None:
        self.running = 0
        self.ended = trio.Event()


class SigninLimits:
    def __init__(self, counters: SigninCounters, rate_per_minute: int,
                 refusal_pause: float = 0.0) -> None:
        self._counters = counters
        self._rate = rate_per_minute
        self._pause = refusal_pause
        self._checks: dict[str, _Checks] = {}  # phones with a check running, no others

    async def admit(self, address: str) -> None:
        """A sign-up or login from `address`; TooManyRequests over the address's rate."""
        if self._rate == 0:
            return
        wait = await self._counters.take_attempt(address, self._rate)
        if wait > 0:
            _BY_ADDRESS.inc()
            raise await self._refusal(wait)

    @asynccontextmanager
    async def guessing(self, phone: str) -> AsyncIterator[Guess]:
        """Around a login's password check: TooManyRequests if the phone had too many wrong
        passwords lately; call `Guess.wrong` when this one was wrong too."""
        claim = secrets.token_hex(8)
        while (wait := await self._counters.claim_guess(phone, claim)) > 0:
            checks = self._checks.get(phone)
            if checks is None:  # the places are wrong passwords (or another node's checks)
                _BY_PHONE.inc()
                raise await self._refusal(wait)
            await checks.ended.wait()  # one place may be free again: ask again
        checks = self._checks.setdefault(phone, _Checks())
        checks.running += 1
        guess = Guess()
        try:
            yield guess
        finally:
            try:
                if not guess.is_wrong:
                    # Also when the login was cancelled (its client went away): the place must
                    # not stay taken. Bounded: the Redis counters give up within their timeout.
                    with trio.CancelScope(shield=True):
                        await self._counters.release_guess(phone, claim)
            finally:
                checks.running -= 1
                if checks.running == 0:
                    del self._checks[phone]
                checks.ended.set()
                checks.ended = trio.Event()


    async def _refusal(self, wait: float) -> TooManyRequests:
        """The refusal of an attempt that may pass in `wait` seconds, after the pause."""
        await trio.sleep(self._pause)
        return TooManyRequests(max(0.0, wait - self._pause))


class LocalCounters:
    """The counters of one process, in memory, bounded by MAX_TRACKED keys per rule.

    `clock` is seconds on a monotonic scale (tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = MAX_TRACKED) -> None:
        self._clock = clock
        self._max = max_tracked
        # address → when its bucket is next empty-handed (GCRA's theoretical arrival time)
        self._arrivals: collections.OrderedDict[str, float] = collections.OrderedDict()
        # phone → claims with when each was taken, oldest first
        self._guesses: collections.OrderedDict[str, dict[str, float]] = (
            collections.OrderedDict())

    async def take_attempt(self, address: str, per_minute: int) -> float:
        now = self._clock()
        interval = 60.0 / per_minute
        tolerance = interval * (per_minute - 1)  # the burst: per_minute attempts at once
        arrival = max(self._arrivals.get(address, now), now)
        wait = arrival - tolerance - now
        if wait > 0:
            return wait
        self._arrivals[address] = arrival + interval
        self._arrivals.move_to_end(address)
        self._forget(self._arrivals, lambda due: due <= now)
        return 0.0

    async def claim_guess(self, phone: str, claim: str) -> float:
        now = self._clock()
        since = now - WRONG_PASSWORD_WINDOW_SECONDS
        claims = {c: at for c, at in self._guesses.get(phone, {}).items() if at > since}
        if len(claims) >= WRONG_PASSWORDS:
            self._guesses[phone] = claims
            return min(claims.values()) - since
        claims[claim] = now
        self._guesses[phone] = claims
        self._guesses.move_to_end(phone)
        self._forget(self._guesses, lambda held: not held or max(held.values()) <= since)
        return 0.0

    async def release_guess(self, phone: str, claim: str) -> None:
        claims = self._guesses.get(phone)
        if claims is not None:
            claims.pop(claim, None)

    def tracked(self) -> int:
        """Addresses and phones held (memory under a flood of new ones stays bounded)."""
        return len(self._arrivals) + len(self._guesses)

    def _forget(self, table: collections.OrderedDict[str, _V],
                expired: Callable[[_V], bool]) -> None:
        """Drop the least recently used entries that no longer limit anything, and over the
        bound the least recently used at all (an address or phone idle the longest)."""
        while table:
            key, value = next(iter(table.items()))
            if not expired(value) and len(table) <= self._max:
                return
            del table[key]
