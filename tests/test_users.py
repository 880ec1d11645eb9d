"""Every `/api/v1/users/*` row of API.md, over a real socket."""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt
import pytest
import trio

from tests.helpers.fakes import FaultyStore
from tests.helpers.server import Server
from vpiska.accounts import Accounts
from vpiska.auth import Passwords, Tokens
from vpiska.config import Config
from vpiska.domain import User, new_id
from vpiska.signin_limits import LocalCounters, SigninLimits
from vpiska.store.memory import MemoryStore
from vpiska.store.sqlite import SqliteStore

CREATE = "/api/v1/users/create"
LOGIN = "/api/v1/users/login"
UPDATE = "/api/v1/users/update"
PASSWORD = "/api/v1/users/password/change"


def claims(server: Server, token: str) -> dict[str, object]:
    c = server.config
    return jwt.decode(token, c.jwt_key, algorithms=["HS256"], issuer=c.jwt_issuer,
                      audience=c.jwt_audience)


async def test_create_returns_login_response_and_token(server: Server) -> None:
    asked = int(time.time())
    result = await server.sign_up("ann", "9001234567")
    answered = int(time.time())
    assert list(result) == ["id", "name", "phone", "imageId", "eventId", "accessToken"]
    assert result["name"] == "ann"
    assert result["phone"] == "9001234567"
    assert result["imageId"] is None
    assert result["eventId"] is None
    token = claims(server, result["accessToken"])
    assert token["ID"] == result["id"]
    assert token["Name"] == "ann"
    assert token["ImageID"] == ""
    # Issued while the request was served, for three days (whole seconds, as JWT has them).
    expires = token["exp"]
    assert isinstance(expires, int)
    assert asked + 3 * 86400 <= expires <= answered + 3 * 86400


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        pytest.param({}, ["NameIsEmpty", "PhoneIsEmpty", "PasswordIsEmpty"], id="empty"),
        pytest.param({"name": 5, "phone": 9001234567, "password": ["x"]},
                     ["NameIsEmpty", "PhoneIsEmpty", "PasswordIsEmpty"], id="wrong-types"),
        pytest.param({"name": "a", "phone": "123", "password": "12345", "confirmPassword": "1"},
                     ["PhoneRegexInvalid", "PasswordLengthInvalid", "ConfirmPasswordInvalid"],
                     id="all-invalid"),
        pytest.param({"name": "a", "phone": "٩٠٠١٢٣٤٥٦٧", "password": "123456",
                      "confirmPassword": "123456"}, ["PhoneRegexInvalid"], id="non-ascii-digits"),
        pytest.param({"name": "a", "phone": "90012345678", "password": "123456",
                      "confirmPassword": "123456"}, ["PhoneRegexInvalid"], id="eleven-digits"),
        pytest.param({"name": "a", "phone": "9001234567", "password": "ééé",
                      "confirmPassword": "ééé"}, [], id="six-utf8-bytes-is-long-enough"),
        pytest.param({"name": "a", "phone": "9001234567", "password": "123456",
                      "confirmPassword": "1234567"}, ["ConfirmPasswordInvalid"], id="mismatch"),
    ],
)
async def test_create_validation_codes_in_order(
    server: Server, body: dict[str, object], codes: list[str]
) -> None:
    envelope = await server.call(CREATE, body)
    assert envelope["isSuccess"] is (not codes)
    if codes:
        assert [e["errorCode"] for e in envelope["errors"]] == codes


async def test_create_reports_which_unique_field_is_taken(server: Server) -> None:
    await server.sign_up("ann", "9001234567")
    await server.sign_up("bob", "9001234568")
    def body(name: str, phone: str) -> dict[str, str]:
        return {"name": name, "phone": phone, "password": "secret1", "confirmPassword": "secret1"}
    assert await server.codes(CREATE, body("ann", "9000000000")) == ["NameAlreadyUse"]
    assert await server.codes(CREATE, body("cid", "9001234567")) == ["PhoneAlreadyUse"]
    assert await server.codes(CREATE, body("ann", "9001234567")) == ["NameAndPhoneAlreadyUse"]
    assert await server.codes(CREATE, body("ann", "9001234568")) == ["NameAndPhoneAlreadyUse"]


@pytest.mark.parametrize("config_overrides", [{"signin_rate_per_minute": 0}])  # 50 at once
async def test_concurrent_sign_ups_with_one_phone_admit_exactly_one(server: Server) -> None:
    outcomes: list[list[str]] = []

    async def sign_up(i: int) -> None:
        body = {"name": f"user{i}", "phone": "9009990000", "password": "secret1",
                "confirmPassword": "secret1"}
        envelope = await server.call(CREATE, body)
        outcomes.append([] if envelope["isSuccess"] else
                        [e["errorCode"] for e in envelope["errors"]])

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(sign_up, i)
    assert outcomes.count([]) == 1
    assert outcomes.count(["PhoneAlreadyUse"]) == 49


async def test_login_validation_and_failures(server: Server) -> None:
    await server.sign_up("ann", "9001234567", "secret1")
    assert await server.codes(LOGIN, {}) == ["PhoneIsEmpty", "PasswordIsEmpty"]
    assert await server.codes(LOGIN, {"phone": "12", "password": "123"}) == [
        "PhoneRegexInvalid", "PasswordLengthInvalid"]
    assert await server.codes(LOGIN, {"phone": "9000000000", "password": "secret1"}) == [
        "UserNotFound"]
    assert await server.codes(LOGIN, {"phone": "9001234567", "password": "wrong12"}) == [
        "InvalidPassword"]
    result = await server.ok(LOGIN, {"phone": "9001234567", "password": "secret1"})
    assert result["name"] == "ann"
    assert result["eventId"] is None


async def test_legacy_hmac_hash_verifies_and_is_upgraded(server: Server) -> None:
    """A user stored by the older backend logs in; its hash is replaced by argon2id."""
    legacy = hmac.new(server.config.hash_key, b"oldpass1", hashlib.sha256).hexdigest()
    store = await SqliteStore.open(server.config.store.target)
    user_id = new_id()
    await store.add_user(User(user_id, "old", "9005550000", legacy))
    login = {"phone": "9005550000", "password": "oldpass1"}
    assert await server.codes(LOGIN, {**login, "password": "wrong12"}) == ["InvalidPassword"]
    before = await store.user_by_id(user_id)
    assert before is not None
    assert before.password_hash == legacy
    assert (await server.ok(LOGIN, login))["id"] == user_id
    after = await store.user_by_id(user_id)
    assert after is not None
    assert after.password_hash.startswith("$argon2id$")
    assert (await server.ok(LOGIN, login))["id"] == user_id
    await store.aclose()


def forge(server: Server, **changes: object) -> str:
    """A token laid out as the older backend wrote them (aud a string, no iat)."""
    c = server.config
    payload = {"aud": c.jwt_audience, "exp": int(time.time()) + 3600, "iss": c.jwt_issuer,
               "ID": changes.pop("ID", new_id()), "Name": "ann", "ImageID": ""}
    key = changes.pop("key", c.jwt_key)
    algorithm = changes.pop("algorithm", "HS256")
    assert isinstance(key, str)
    assert isinstance(algorithm, str)
    payload.update(changes)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=algorithm)


async def test_older_backend_token_is_accepted(server: Server) -> None:
    user = await server.sign_up()
    token = forge(server, ID=user["id"])
    assert "accessToken" in await server.ok(UPDATE, {}, token=token)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"exp": int(time.time()) - 10}, id="expired"),
        pytest.param({"iss": "Other"}, id="wrong-issuer"),
        pytest.param({"aud": "Other"}, id="wrong-audience"),
        pytest.param({"iss": None}, id="no-issuer"),
        pytest.param({"aud": None}, id="no-audience"),
        pytest.param({"exp": None}, id="no-exp"),
        pytest.param({"key": "another key of enough length for hs256!"}, id="wrong-key"),
        pytest.param({"algorithm": "HS512"}, id="hs512"),
    ],
)
async def test_bad_tokens_are_unauthorized(server: Server, changes: dict[str, object]) -> None:
    assert await server.codes(UPDATE, {}, token=forge(server, **changes)) == ["unauthorized"]


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz",
     "Bearer eyJhbGciOiJub25lIn0.eyJJRCI6IngifQ."],
)
async def test_malformed_authorization_is_unauthorized(server: Server, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    envelope = await server.call(UPDATE, {}, headers=headers)
    assert envelope["errors"] == [{"errorCode": "unauthorized"}]


async def test_update_changes_name_and_phone_with_uniqueness(server: Server) -> None:
    ann = await server.sign_up("ann", "9001234567")
    await server.sign_up("bob", "9001234568")
    token = ann["accessToken"]
    fresh = (await server.ok(UPDATE, {}, token=token))["accessToken"]
    assert claims(server, fresh)["Name"] == "ann"
    assert await server.codes(UPDATE, {"phone": "12"}, token=token) == ["PhoneRegexInvalid"]
    assert await server.codes(UPDATE, {"name": "bob"}, token=token) == ["NameAlreadyUse"]
    assert await server.codes(UPDATE, {"phone": "9001234568"}, token=token) == ["PhoneAlreadyUse"]
    assert await server.codes(UPDATE, {"name": "bob", "phone": "9001234568"}, token=token) == [
        "NameAndPhoneAlreadyUse"]
    renamed = (await server.ok(UPDATE, {"name": "anna", "phone": "9001112233"}, token=token))
    assert claims(server, renamed["accessToken"])["Name"] == "anna"
    login = await server.ok(LOGIN, {"phone": "9001112233", "password": "secret1"})
    assert login["name"] == "anna"
    assert login["id"] == ann["id"]


async def test_password_change_stores_the_new_password(server: Server) -> None:
    ann = await server.sign_up("ann", "9001234567", "secret1")
    token = ann["accessToken"]
    assert await server.codes(PASSWORD, {}, token=token) == ["PasswordIsEmpty"]
    assert await server.codes(PASSWORD, {"password": "123", "confirmPassword": "1"},
                              token=token) == ["PasswordLengthInvalid", "ConfirmPasswordInvalid"]
    result = await server.ok(PASSWORD, {"password": "newpass1", "confirmPassword": "newpass1"},
                             token=token)
    assert claims(server, result["accessToken"])["ID"] == ann["id"]
    assert await server.codes(LOGIN, {"phone": "9001234567", "password": "secret1"}) == [
        "InvalidPassword"]
    await server.ok(LOGIN, {"phone": "9001234567", "password": "newpass1"})


async def test_set_image_returns_token_carrying_the_image(server: Server) -> None:
    ann = await server.sign_up()
    files = {"image": ("me.png", b"\x89PNG fake", "image/png")}
    result = await server.ok("/api/v1/users/media/set", token=ann["accessToken"], files=files)
    assert list(result) == ["imageId", "accessToken"]
    assert claims(server, result["accessToken"])["ImageID"] == result["imageId"]
    login = await server.ok(LOGIN, {"phone": "9001234567", "password": "secret1"})
    assert login["imageId"] == result["imageId"]
    image = await server.http.get(f"/api/v1/media/{result['imageId']}")
    assert image.content == b"\x89PNG fake"
    assert image.headers["content-type"] == "image/png"


async def test_protected_endpoints_check_the_token_first(server: Server) -> None:
    for path in (UPDATE, PASSWORD, "/api/v1/users/media/set"):
        assert await server.codes(path, content=b"junk") == ["unauthorized"]


async def test_users_stored_before_start_are_known_without_a_store_read() -> None:
    """After a restart every client reconnects at once: their tokens' users are looked up in
    one read at start-up, not one store read per handshake; a stranger is still looked up."""
    inner = MemoryStore()
    user = User(id=new_id(), name="alice", phone="9001112233", password_hash="h")
    await inner.add_user(user)
    store = FaultyStore(inner)
    config = Config.from_env({})
    tokens = Tokens(config)
    accounts = Accounts(store, tokens, Passwords(config), SigninLimits(LocalCounters(), 0))
    await accounts.know_users()
    assert await accounts.identify(tokens.issue(user)) is not None
    assert store.count("user_by_id") == 0
    stranger = User(id=new_id(), name="bob", phone="9001112234", password_hash="h")
    assert await accounts.identify(tokens.issue(stranger)) is None
    assert store.count("user_by_id") == 1


def test_a_token_is_checked_with_the_key_of_the_server_reading_it() -> None:
    """The key's preparation is kept between tokens (vpiska/auth.py): two servers with different
    keys in one process, read in turns, each accept their own tokens and refuse the other's."""
    user = User(id=new_id(), name="alice", phone="9001112233", password_hash="h")
    ours = Tokens(Config.from_env({"JWT_KEY": "the first key, long enough for hs256"}))
    theirs = Tokens(Config.from_env({"JWT_KEY": "the second key, long enough for hs256"}))
    for _ in range(2):
        assert ours.read(ours.issue(user)) is not None
        assert theirs.read(ours.issue(user)) is None
        assert theirs.read(theirs.issue(user)) is not None
        assert ours.read(theirs.issue(user)) is None
