"""Reading tokens (vpiska/auth.py `Tokens.read`): what is remembered, for how long, and what never.

A remembered token's identity is the same object at each read: that is how these tests see a
token answered from the table rather than checked afresh.
"""

from __future__ import annotations

import base64
import hmac
import itertools
import random
import time

import jwt
import pytest

from vpiska import auth
from vpiska.accounts import Accounts
from vpiska.auth import Passwords, Tokens
from vpiska.config import Config
from vpiska.domain import User, new_id
from vpiska.signin_limits import LocalCounters, SigninLimits
from vpiska.store.memory import MemoryStore

CONFIG = Config.from_env({})


def user(name: str = "alice") -> User:
    return User(id=new_id(), name=name, phone="9001112233", password_hash="h")


def token(**claims: object) -> str:
    """A token of ours for a new user, with `claims` changed (None: left out)."""
    payload: dict[str, object] = {
        "ID": new_id(), "Name": "alice", "ImageID": "", "iss": CONFIG.jwt_issuer,
        "aud": CONFIG.jwt_audience, "exp": int(time.time()) + 3600}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, CONFIG.jwt_key,
                      algorithm="HS256")


class Clock:
    """The time a remembered token's expiry is checked against, set by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_token_read_again_is_answered_from_memory() -> None:
    tokens = Tokens(CONFIG)
    issued = tokens.issue(user())
    first = tokens.read(issued)
    assert first is not None
    assert tokens.read(issued) is first


def test_a_remembered_token_is_refused_from_its_expiry_on() -> None:
    clock = Clock()
    tokens = Tokens(CONFIG, clock=clock)
    expires = int(clock.now) + 60
    remembered = token(exp=expires)
    identity = tokens.read(remembered)
    assert identity is not None
    clock.now = expires - 0.5
    assert tokens.read(remembered) is identity
    clock.now = expires  # PyJWT's rule: expired at `exp` itself
    assert tokens.read(remembered) is None
    clock.now = expires - 0.5  # forgotten for good, even by a clock that goes back
    assert tokens.read(remembered) is not identity


def test_an_expired_token_is_refused_and_not_remembered() -> None:
    tokens = Tokens(CONFIG)
    expired = token(exp=int(time.time()) - 1)
    assert tokens.read(expired) is None
    assert tokens.read(expired) is None


def test_a_bad_signature_is_never_taken_for_the_good_one() -> None:
    """The same header and claims as a remembered token, with another signature (altered, or
    another key's): refused every time, and the good one still reads."""
    tokens = Tokens(CONFIG)
    good = token()
    identity = tokens.read(good)
    assert identity is not None
    head, _, signature = good.rpartition(".")
    flipped = "A" if signature[0] != "A" else "B"
    forged = [f"{head}.{flipped}{signature[1:]}",
              jwt.encode(jwt.decode(good, options={"verify_signature": False}),
                         "another key, long enough for hs256", algorithm="HS256"),
              f"{head}."]
    for bad in forged * 2:
        assert bad != good
        assert tokens.read(bad) is None
    assert tokens.read(good) is identity


@pytest.mark.parametrize("claims", [
    pytest.param({"iss": "Other"}, id="wrong-issuer"),
    pytest.param({"aud": "Other"}, id="wrong-audience"),
    pytest.param({"aud": None}, id="no-audience"),
    pytest.param({"exp": None}, id="no-exp"),
    pytest.param({"ID": "not-a-uuid"}, id="bad-id"),
    pytest.param({"nbf": int(time.time()) + 3600}, id="not-yet-valid"),
])
def test_a_refused_token_is_refused_again(claims: dict[str, object]) -> None:
    tokens = Tokens(CONFIG)
    refused = token(**claims)
    assert tokens.read(refused) is None
    assert tokens.read(refused) is None


def test_at_most_the_bound_is_remembered_least_recently_used_forgotten_first() -> None:
    tokens = Tokens(CONFIG, remembered=3)
    issued = [token() for _ in range(4)]
    first, *others = [tokens.read(t) for t in issued[:3]]
    assert tokens.read(issued[0]) is first  # now the most recently used
    tokens.read(issued[3])  # the fourth: the least recently used (issued[1]) goes
    assert tokens.read(issued[0]) is first
    assert tokens.read(issued[2]) is others[1]
    again = tokens.read(issued[1])
    assert again == others[0]
    assert again is not others[0]


def test_a_long_token_is_checked_but_not_remembered() -> None:
    tokens = Tokens(CONFIG)
    long = token(padding="x" * auth.REMEMBERED_TOKEN_CHARS)
    identity = tokens.read(long)
    assert identity is not None
    assert tokens.read(long) is not identity


async def test_a_deleted_users_remembered_token_is_refused() -> None:
    store = MemoryStore()
    alice = user()
    await store.add_user(alice)
    tokens = Tokens(CONFIG)
    accounts = Accounts(store, tokens, Passwords(CONFIG), SigninLimits(LocalCounters(), 0))
    issued = tokens.issue(alice)
    assert await accounts.identify(issued) is not None
    assert await accounts.identify(issued) is not None  # remembered by now
    await store.delete_user(alice.id)
    accounts.forget(alice.id)
    assert await accounts.identify(issued) is None


def _segments() -> list[bytes]:
    """Segments near every edge of base64url: padding, stray bits, foreign characters."""
    samples = [b"", b"=", b"==", b"===", b"A", b"AA", b"AAA", b"AAAA", b"AB", b"AB==", b"AB=",
               b"ABC=", b"ABCD====", b"QQ", b"QR", b"QQ==", b"QR==", b"Zm9v", b"Zm9vYg",
               b"Zm9vYh", b"a+b/", b"a-b_", b"ab\n", b" abc", b"ab.c", b"=AB", b"A=B=",
               b"\xff\xfe", base64.urlsafe_b64encode(bytes(range(256)))]
    rng = random.Random(22)
    alphabet = b"AQgw-_+/=.~ \x80"
    samples += [bytes(rng.choice(alphabet) for _ in range(rng.randrange(9)))
                for _ in range(3000)]
    samples += [bytes(chars) for n in range(4) for chars in itertools.product(b"Ag-=+", repeat=n)]
    return samples


def test_segments_are_read_exactly_as_pyjwt_reads_them() -> None:
    for segment in _segments():
        try:
            expected: bytes | None = jwt.PyJWS._decode_base64url_segment(segment, "x")
        except jwt.DecodeError:
            expected = None
        try:
            got: bytes | None = auth._JWS._decode_base64url_segment(segment, "x")
        except jwt.DecodeError:
            got = None
        assert got == expected, segment


@pytest.mark.parametrize("payload", [
    pytest.param(b'{"ID":"%s","Name":"eve","ImageID":"\\udfff"}', id="lone-surrogate"),
    pytest.param(b'\xef\xbb\xbf{"ID":"%s","Name":"eve","ImageID":""}', id="byte-order-mark"),
    pytest.param(b'{"ID":"%s","Name":"eve","ImageID":"","n":NaN}', id="nan"),
])
def test_claims_only_the_json_module_reads_are_read_as_before(payload: bytes) -> None:
    """The claims are read with msgspec; JSON it refuses and the json module takes is read as
    PyJWT reads it, so such a token is valid as it was (its ImageID dropped if not text)."""
    user_id = new_id()
    claims = payload.replace(b"%s", user_id.encode())[:-1] + (
        b',"iss":"%s","aud":"%s","exp":%d}' % (CONFIG.jwt_issuer.encode(),
                                              CONFIG.jwt_audience.encode(),
                                              int(time.time()) + 3600))
    head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(claims).rstrip(b"=")
    signature = base64.urlsafe_b64encode(
        hmac.digest(CONFIG.jwt_key.encode(), head + b"." + body, "sha256")).rstrip(b"=")
    identity = Tokens(CONFIG).read(b".".join((head, body, signature)).decode())
    assert identity is not None
    assert identity.user_id == user_id
    assert identity.image_id == ""
