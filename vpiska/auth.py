"""Access tokens and password hashes, compatible both ways with the older backend.

Tokens: HS256 JWTs with the older backend's claim names (`ID`, `Name`, `ImageID`), and `iss`,
`aud` and `exp` required on read, so tokens it issued keep working here and ours work there.
A token read once is remembered (`Tokens.read`): a phone reconnects with the same token many
times in its token's life, and a reconnect storm brings thousands of tokens already checked.

Passwords: argon2id through the passlib API. Parameters are OWASP's second recommended set
(m = 12 MiB, t = 3, p = 1), which OWASP rates equal to its first (19 MiB, t = 2); on this
machine class it costs ~33 ms instead of ~45 ms and a third less memory per concurrent hash.
Hashes in the older format (64 hex chars of HMAC-SHA256(HASH_KEY, password)) still verify and
are reported as needing an upgrade, which the login path does at once.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import re
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, TypeVar, TypeVarTuple

import jwt
import msgspec
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
    """PyJWT's HS256, checking a key once rather than once per token, and signing in C.

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

    def sign(self, msg: bytes, key: bytes) -> bytes:
        # The one-shot HMAC in C: the same digest as PyJWT's hmac.new(...).digest() (a Python
        # HMAC object), in a third of the time.
        return hmac.digest(key, msg, "sha256")

    def check_key_length(self, key: bytes) -> str | None:
        # The default key is short, and said so once at start-up (above): PyJWT's check and
        # its ignored warning cost ~4 µs of every token.
        return None



# Tokens remembered as read, the least recently used forgotten first. An entry costs ~0.9 KiB
# for one of our tokens (~330 characters with an image and a 25-character name: the string,
# its place in the table, the Identity and its strings): ~17 MiB when full. Only tokens of at
# most REMEMBERED_TOKEN_CHARS are kept (ours with a 50-character Cyrillic name, escaped, are
# ~750), so even a table filled with tokens forged with the public default key stays under
# ~45 MiB.
REMEMBERED_TOKENS = 20_000
REMEMBERED_TOKEN_CHARS = 1024
_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class _JWS(jwt.PyJWS):
    """PyJWT's JWS with its base64url check done in C.

    PyJWT 2.15 tests each character of a segment against the alphabet in a Python generator:
    ~40 % of a token check. This accepts exactly what it accepts: at most two `=` and only
    where they end a 4-character quantum, nothing outside the base64url alphabet, and only the
    canonical encoding of the bytes (no stray bits in the last character).
    """

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        stripped = segment.rstrip(b"=")
        padding = len(segment) - len(stripped)
        if (padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1
                or stripped.translate(None, _BASE64URL)):
            raise jwt.DecodeError(f"Invalid {name} padding")
        decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
        if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded


class _JWT(jwt.PyJWT):
    """PyJWT's JWT with the HS256 and the JWS above, reading the claims with msgspec (PyJWT's
    documented hook for another payload decoding): ~3× faster than the json module. What
    msgspec refuses and the json module may take (a lone surrogate, NaN, a byte order mark)
    is read by PyJWT's own decoding, so a token means exactly what it meant before.
    """

    def __init__(self) -> None:
        super().__init__()
        self._jws = _JWS(options=self._get_sig_options())
        self._jws.unregister_algorithm("HS256")
        self._jws.register_algorithm("HS256", _HS256())

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            payload = msgspec.json.decode(decoded["payload"])
        except (msgspec.DecodeError, RecursionError):
            return super()._decode_payload(decoded)
        if not isinstance(payload, dict):
            raise jwt.DecodeError("Invalid payload string: must be a json object")
        return payload


_JWT_CODEC = _JWT()


class Tokens:
    """Issue tokens, and read them: a token read once is remembered with the identity it gave
    and its expiry (REMEMBERED_TOKENS, least recently used forgotten first), so reading it again
    costs a table look-up and the expiry check, which is made at every read.

    Only valid tokens are remembered, keyed by their exact text, so a refused one (a bad
    signature, claims, or one not valid *yet*) is checked afresh each time and can never take
    a valid one's place by being remembered. That the token's user still exists is not the
    token's to say: Accounts.identify checks it at every read.
    """

    def __init__(self, config: Config, *, remembered: int = REMEMBERED_TOKENS,
                 clock: Callable[[], float] = time.time) -> None:
        """`clock`: the time a remembered token's expiry is checked against."""
        self._key = config.jwt_key
        self._issuer = config.jwt_issuer
        self._audience = config.jwt_audience
        self._lifetime = timedelta(days=config.jwt_lifetime_days)
        # token → (its identity, its `exp`)
        self._read: collections.OrderedDict[str, tuple[Identity, int]] = \
            collections.OrderedDict()
        self._remembered = remembered
        self._clock = clock

    def issue(self, user: User) -> str:
        claims = {
            "ID": user.id,
            "Name": user.name,
            "ImageID": user.image_id or "",
            "iss": self._issuer,
            "aud": self._audience,
            "exp": utc_now() + self._lifetime,
        }
        return _JWT_CODEC.encode(claims, self._key, algorithm="HS256")

    def read(self, token: str) -> Identity | None:
        """The identity in `token`, or None for anything but a valid, current token of ours.

        The default key is public, so claims are client input like any other: `ID` must be a
        UUID v4 and `Name`/`ImageID` valid text, or the token is refused.
        """
        remembered = self._read.get(token)
        if remembered is not None:
            identity, expires = remembered
            if expires > self._clock():  # PyJWT's rule: expired at `exp` itself
                self._read.move_to_end(token)
                return identity
            del self._read[token]  # expired for good
            return None
        try:
            claims = _JWT_CODEC.decode(
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
        identity = Identity(user_id, name, image_id)
        if len(token) <= REMEMBERED_TOKEN_CHARS:
            self._read[token] = (identity, int(claims["exp"]))
            if len(self._read) > self._remembered:
                self._read.popitem(last=False)
        return identity


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
