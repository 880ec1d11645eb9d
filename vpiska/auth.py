"""Access tokens and password hashes, compatible both ways with the older backend.

Tokens: HS256 JWTs with the older backend's claim names (`ID`, `Name`, `ImageID`), and `iss`,
`aud` and `exp` required on read, so tokens it issued keep working here and ours work there.

Passwords: argon2id through the passlib API. Parameters are OWASP's second recommended set
(m = 12 MiB, t = 3, p = 1), which OWASP rates equal to its first (19 MiB, t = 2); on this
machine class it costs ~33 ms instead of ~45 ms and a third less memory per concurrent hash.
Hashes in the older format (64 hex chars of HMAC-SHA256(HASH_KEY, password)) still verify and
are reported as needing an upgrade, which the login path does at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TypeVar, TypeVarTuple

import jwt
import trio
from jwt.algorithms import HMACAlgorithm
from passlib.context import CryptContext

from vpiska import metrics
from vpiska.config import Config
from vpiska.domain import Identity, User, is_id, is_text, utc_now
from vpiska.fair_slots import FairSlots, Slot
from vpiska.low_priority_threads import LowPriorityThreads

_HASHED = metrics.PASSWORD_HASHES.labels(work="hash")
_VERIFIED = metrics.PASSWORD_HASHES.labels(work="verify")
LEGACY_HASH = re.compile(r"^[0-9a-fA-F]{64}$")
_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")

# The default JWT_KEY (20 bytes) is shorter than PyJWT likes, but deployed tokens are signed with
# it; PyJWT would warn on every token, so vpiska warns once at start-up instead (__main__).
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


class _HS256(HMACAlgorithm):
    """PyJWT's HS256, checking a key once rather than once per token.

    PyJWT's `prepare_key` makes sure an HMAC secret is not an asymmetric key or a JWK (a PEM,
    SSH and DER probe and a JSON parse): ~18 µs of each ~70 µs token check, with the same
    answer every time for the one key a server has. A key is prepared as PyJWT prepares it,
    and kept until another key is used.
    """

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._prepared: tuple[str | bytes, bytes] | None = None

    def prepare_key(self, key: str | bytes) -> bytes:
        prepared = self._prepared
        if prepared is None or prepared[0] != key:
            prepared = self._prepared = (key, super().prepare_key(key))
        return prepared[1]


jwt.unregister_algorithm("HS256")
jwt.register_algorithm("HS256", _HS256())


class Tokens:
    def __init__(self, config: Config) -> None:
        self._key = config.jwt_key
        self._issuer = config.jwt_issuer
        self._audience = config.jwt_audience
        self._lifetime = timedelta(days=config.jwt_lifetime_days)

    def issue(self, user: User) -> str:
        claims = {
            "ID": user.id,
            "Name": user.name,
            "ImageID": user.image_id or "",
            "iss": self._issuer,
            "aud": self._audience,
            "exp": utc_now() + self._lifetime,
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    def read(self, token: str) -> Identity | None:
        """The identity in `token`, or None for anything but a valid, current token of ours.

        The default key is public, so claims are client input like any other: `ID` must be a
        UUID v4 and `Name`/`ImageID` valid text, or the token is refused.
        """
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.InvalidTokenError, RecursionError, ValueError, TypeError, OverflowError):
            return None
        user_id, name, image_id = claims.get("ID"), claims.get("Name"), claims.get("ImageID", "")
        if not (isinstance(user_id, str) and is_id(user_id)
                and isinstance(name, str) and is_text(name)):
            return None
        if not (isinstance(image_id, str) and is_text(image_id)):
            image_id = ""
        return Identity(user_id, name, image_id)


class Passwords:
    """Hash and verify off the event loop; at most `password_hash_concurrency` at once.

    `party` is who the work is for (the client address of a sign-up or login): the slots go
    fairly among parties (vpiska/fair_slots.py), so addresses guessing passwords at their
    full rate cannot make a user elsewhere wait behind all their hashes; a right password's
    verification is forgiven (not counted against its party).

    With `low_priority` threads, the hashes of suspected guessers (a party with several wrong
    passwords lately: vpiska/fair_slots.py) wait for
    `password_hash_concurrency` slots of their own and run on those threads at the lowest
    priority (vpiska/low_priority_threads.py): a storm's admitted guesses then take little
    more than the CPU that the event loop and everyone else's hashes leave, and no one else
    waits for their slots. Without (a tool hashing once), every hash takes its turn on
    trio's worker threads.
    """

    def __init__(self, config: Config, low_priority: LowPriorityThreads | None = None) -> None:
        self._hash_key = config.hash_key
        self._context = CryptContext(
            schemes=["argon2"],
            argon2__type="ID",
            argon2__memory_cost=12 * 1024,
            argon2__time_cost=3,
            argon2__parallelism=1,
        )
        self._slots = FairSlots(config.password_hash_concurrency,
                                suspects_apart=low_priority is not None)
        self._low_priority = low_priority

    async def hash(self, password: str, party: str = "") -> str:
        async with self._slots.slot(party) as slot:
            return await self._off_the_loop(slot, self._hash, password)

    def _hash(self, password: str) -> str:
        _HASHED.inc()
        return self._context.hash(password)

    async def verify(self, password: str, stored: str, party: str = "") -> tuple[bool, bool]:
        """(password matches, stored hash should be replaced by a fresh one)."""
        if LEGACY_HASH.match(stored):
            return self._verify_legacy(password, stored)
        async with self.turn(party) as turn:
            return await turn.verify(password, stored)

    @asynccontextmanager
    async def turn(self, party: str = "") -> AsyncIterator[Turn]:
        """`party`'s hash slot, taken before what leads to the verification: a login holds it
        from before its store read. A storm's concurrent attempts then wait here, in the fair
        order, and not in the store's queue ahead of the users' reads (sqlite reads one at a
        time: 200 wrong logins arriving at once delayed the users' logins by ~200 ms)."""
        async with self._slots.slot(party) as slot:
            yield Turn(self, slot)

    async def _verify_in(self, slot: Slot, password: str, stored: str) -> tuple[bool, bool]:
        if LEGACY_HASH.match(stored):
            return self._verify_legacy(password, stored)
        ok, upgrade = await self._off_the_loop(slot, self._verify_modern, password, stored)
        if ok:  # a user logging in, not a guess: it does not delay the party's next turn
            slot.forgive()
        else:
            slot.wrong()
        return ok, upgrade

    def _verify_legacy(self, password: str, stored: str) -> tuple[bool, bool]:
        return hmac.compare_digest(self.legacy_hash(password), stored.lower()), True

    async def _off_the_loop(self, slot: Slot, work: Callable[[*_Args], _T],
                            *args: *_Args) -> _T:
        if slot.suspect:
            assert self._low_priority is not None  # suspects are apart only with these threads
            return await self._low_priority.run_sync(work, *args)
        return await trio.to_thread.run_sync(work, *args)

    def _verify_modern(self, password: str, stored: str) -> tuple[bool, bool]:
        _VERIFIED.inc()
        try:
            ok = self._context.verify(password, stored)
        except ValueError:  # not a hash passlib knows: nothing can match it
            return False, False
        return ok, ok and self._context.needs_update(stored)

    def legacy_hash(self, password: str) -> str:
        return hmac.new(self._hash_key, password.encode(), hashlib.sha256).hexdigest()


class Turn:
    """A party's hash slot, held (`Passwords.turn`)."""

    def __init__(self, passwords: Passwords, slot: Slot) -> None:
        self._passwords = passwords
        self._slot = slot

    async def verify(self, password: str, stored: str) -> tuple[bool, bool]:
        """As `Passwords.verify`, in this slot."""
        return await self._passwords._verify_in(self._slot, password, stored)
