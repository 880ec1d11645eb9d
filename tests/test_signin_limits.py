"""Sign-in abuse limits (vpiska/signin_limits.py) and the client address they count
(vpiska/http/client_address.py): the rules on a clock of the test's own, then over real sockets,
each client from an address of its own (127.0.0.0/8 is all loopback, so a client socket can
be bound to 127.0.0.2, 127.0.0.3, …)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import httpx
import pytest
import trio

from tests.helpers.server import Server
from tests.helpers.signin import (
    LOGIN,
    PASSWORD,
    WAIT_SECONDS,
    Clock,
    add_users,
    client_from,
    codes,
    login,
)
from vpiska.config import Config, ConfigError
from vpiska.errors import TooManyRequests
from vpiska.http.client_address import client_address
from vpiska.signin_limits import (
    WRONG_PASSWORD_WINDOW_SECONDS,
    LocalCounters,
    SigninLimits,
)

CREATE = "/api/v1/users/create"


# --- The rules, on the test's clock ----------------------------------------------------------

async def test_an_address_gets_its_burst_then_one_attempt_per_interval() -> None:
    clock = Clock()
    limits = SigninLimits(LocalCounters(clock), rate_per_minute=6)
    for _ in range(6):
        await limits.admit("10.0.0.1")
    with pytest.raises(TooManyRequests) as refused:
        await limits.admit("10.0.0.1")
    assert refused.value.retry_after == pytest.approx(10.0)
    await limits.admit("10.0.0.2")  # another address has its own burst
    clock.now += 9.9
    with pytest.raises(TooManyRequests):
        await limits.admit("10.0.0.1")
    clock.now += 0.1
    await limits.admit("10.0.0.1")  # one interval (60 s / 6) later, one more
    with pytest.raises(TooManyRequests):
        await limits.admit("10.0.0.1")
    clock.now += 60
    for _ in range(6):  # idle for a minute: the whole burst again
        await limits.admit("10.0.0.1")


async def test_refusals_are_answered_after_the_pause_with_the_wait_left(
        autojump_clock: trio.abc.Clock) -> None:
    """A guesser resending each refusal at once gets one answer per pause per connection;
    admitted attempts do not wait, and the wait announced is what is left after the pause."""
    limits = SigninLimits(LocalCounters(trio.current_time), rate_per_minute=6,
                          refusal_pause=1.0)
    started = trio.current_time()
    for _ in range(6):
        await limits.admit("10.0.0.1")
    for _ in range(4):
        await guess(limits, "9001234567", wrong=True)
    assert trio.current_time() == started
    with pytest.raises(TooManyRequests) as by_address:
        await limits.admit("10.0.0.1")
    assert trio.current_time() - started == pytest.approx(1.0)
    assert by_address.value.retry_after == pytest.approx(9.0)  # 10 s from the refusal
    await guess(limits, "9001234567", wrong=True)
    with pytest.raises(TooManyRequests) as by_phone:
        await guess(limits, "9001234567", wrong=False)
    assert trio.current_time() - started == pytest.approx(2.0)
    assert by_phone.value.retry_after == pytest.approx(WRONG_PASSWORD_WINDOW_SECONDS - 2.0)


async def test_a_zero_rate_admits_every_attempt() -> None:
    limits = SigninLimits(LocalCounters(Clock()), rate_per_minute=0)
    for _ in range(1000):
        await limits.admit("10.0.0.1")


async def guess(limits: SigninLimits, phone: str, *, wrong: bool) -> None:
    async with limits.guessing(phone) as attempt:
        if wrong:
            attempt.wrong()


async def test_a_phone_is_refused_after_five_wrong_passwords_until_the_oldest_is_old() -> None:
    clock = Clock()
    limits = SigninLimits(LocalCounters(clock), rate_per_minute=0)
    for minute in range(5):
        clock.now = 1000.0 + minute * 60
        await guess(limits, "9001234567", wrong=True)
    with pytest.raises(TooManyRequests) as refused:
        await guess(limits, "9001234567", wrong=False)  # the right password too
    assert refused.value.retry_after == pytest.approx(WRONG_PASSWORD_WINDOW_SECONDS - 4 * 60)
    await guess(limits, "9001234568", wrong=False)  # another phone is not concerned
    clock.now = 1000.0 + WRONG_PASSWORD_WINDOW_SECONDS + 1  # the first failure is 15 min old
    await guess(limits, "9001234567", wrong=True)
    with pytest.raises(TooManyRequests):
        await guess(limits, "9001234567", wrong=False)


async def test_right_passwords_take_no_place_among_the_wrong_ones() -> None:
    limits = SigninLimits(LocalCounters(Clock()), rate_per_minute=0)
    for _ in range(4):
        await guess(limits, "9001234567", wrong=True)
    for _ in range(10):
        await guess(limits, "9001234567", wrong=False)
    await guess(limits, "9001234567", wrong=True)
    with pytest.raises(TooManyRequests):
        await guess(limits, "9001234567", wrong=False)


async def test_concurrent_guesses_get_five_places_before_any_is_known_wrong() -> None:
    """200 guesses arriving at once: 5 are let through to a password check (each holding its
    place while it runs), the other 195 wait for them and are refused once they are known
    wrong."""
    limits = SigninLimits(LocalCounters(Clock()), rate_per_minute=0)
    checking = 0
    refused = 0
    release = trio.Event()

    async def one() -> None:
        nonlocal checking, refused
        try:
            async with limits.guessing("9001234567") as attempt:
                checking += 1
                await release.wait()
                attempt.wrong()
        except TooManyRequests:
            refused += 1

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        assert (checking, refused) == (5, 0)
        release.set()
    assert (checking, refused) == (5, 195)


async def test_logins_at_once_to_one_phone_with_its_password_are_all_let_in() -> None:
    """Eight devices of one owner logging in at once: none is a wrong password, so none is
    refused; those beyond the five places wait for a check to end."""
    limits = SigninLimits(LocalCounters(Clock()), rate_per_minute=0)
    checked = 0

    async def one() -> None:
        nonlocal checked
        async with limits.guessing("9001234567"):
            await trio.lowlevel.checkpoint()
            checked += 1

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    assert checked == 8


async def test_a_cancelled_login_gives_its_place_back() -> None:
    limits = SigninLimits(LocalCounters(Clock()), rate_per_minute=0)
    for _ in range(4):
        await guess(limits, "9001234567", wrong=True)
    with trio.CancelScope() as scope:
        async with limits.guessing("9001234567"):
            scope.cancel()
            await trio.sleep_forever()
    await guess(limits, "9001234567", wrong=True)  # the fifth place was free again


async def test_local_counters_stay_bounded_under_a_flood_of_new_keys() -> None:
    clock = Clock()
    counters = LocalCounters(clock, max_tracked=100)
    limits = SigninLimits(counters, rate_per_minute=3)
    for n in range(10_000):
        await limits.admit(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        await guess(limits, f"9{n:09d}", wrong=True)
    assert counters.tracked() <= 200
    # The most recent are still held: a guesser cannot flush its own record by flooding.
    for _ in range(2):
        await limits.admit("10.0.39.15")  # the last address (n = 9999) had one of its 3
    with pytest.raises(TooManyRequests):
        await limits.admit("10.0.39.15")
    clock.now += 120  # idle entries are dropped as new ones come, not kept to the bound
    await limits.admit("10.200.0.1")
    assert counters.tracked() <= 101


# --- The client address ----------------------------------------------------------------------

def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    return {"client": None if peer is None else (peer, 40000),
            "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded]}


TRUSTED = Config.from_env({"TRUSTED_PROXIES": "10.0.0.1, 10.1.0.0/16 ::1"}).trusted_proxies


@pytest.mark.parametrize(("request_scope", "address"), [
    pytest.param(scope("203.0.113.5"), "203.0.113.5", id="peer"),
    pytest.param(scope("203.0.113.5", "198.51.100.1"), "203.0.113.5",
                 id="untrusted-peer-header-ignored"),
    pytest.param(scope("10.0.0.1", "198.51.100.1"), "198.51.100.1", id="trusted-proxy"),
    pytest.param(scope("10.0.0.1", "6.6.6.6, 198.51.100.1"), "198.51.100.1",
                 id="client-written-entries-ignored"),
    pytest.param(scope("10.0.0.1", "6.6.6.6", "198.51.100.1, 10.1.2.3"), "198.51.100.1",
                 id="chain-of-trusted-proxies"),
    pytest.param(scope("10.0.0.1", "198.51.100.1:5555"), "198.51.100.1", id="entry-with-port"),
    pytest.param(scope("10.0.0.1", "[2001:db8::1]:5555"), "2001:db8::/64", id="ipv6-with-port"),
    pytest.param(scope("10.0.0.1", "not an address"), "10.0.0.1", id="garbage-entry"),
    pytest.param(scope("10.0.0.1"), "10.0.0.1", id="trusted-proxy-without-header"),
    pytest.param(scope("::1", "10.1.0.9, 10.0.0.1"), "10.1.0.9", id="all-trusted-leftmost"),
    pytest.param(scope("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64", id="ipv6-by-64"),
    pytest.param(scope("::ffff:203.0.113.5"), "203.0.113.5", id="ipv4-mapped"),
    pytest.param(scope(None), "", id="no-peer"),
])
def test_the_client_address(request_scope: dict[str, Any], address: str) -> None:
    assert client_address(request_scope, TRUSTED) == address


@pytest.mark.parametrize(("env", "variable"), [
    ({"TRUSTED_PROXIES": "10.0.0.1, proxy.local"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES"),
    ({"SIGNIN_RATE_PER_MINUTE": "-1"}, "SIGNIN_RATE_PER_MINUTE"),
    ({"SIGNIN_RATE_PER_MINUTE": "many"}, "SIGNIN_RATE_PER_MINUTE"),
    ({"SIGNIN_REFUSAL_PAUSE_MS": "-1"}, "SIGNIN_REFUSAL_PAUSE_MS"),
    ({"SIGNIN_REFUSAL_PAUSE_MS": "10001"}, "SIGNIN_REFUSAL_PAUSE_MS"),
])
def test_invalid_settings_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as invalid:
        Config.from_env(env)
    assert invalid.value.variable == variable


# --- Over real sockets -----------------------------------------------------------------------

def sign_up(phone: str) -> dict[str, str]:
    return {"name": f"n{phone}", "phone": phone, "password": PASSWORD,
            "confirmPassword": PASSWORD}


async def test_health_answers_200_with_an_empty_body(server: Server) -> None:
    with trio.fail_after(WAIT_SECONDS):
        stream = await trio.open_tcp_stream("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
        async with stream:
            await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = b""
            while chunk := await stream.receive_some():
                raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 "
    headers = {name.lower(): value for name, _, value in
               (line.partition(": ") for line in lines[1:])}
    assert body == b""
    assert headers["content-length"] == "0"
    assert "content-type" not in headers
    assert set(headers) <= {"content-length", "date", "server", "x-request-id", "connection"}


@pytest.mark.parametrize("config_overrides", [{"signin_rate_per_minute": 3}])
async def test_logins_and_sign_ups_over_the_address_rate_are_refused(server: Server) -> None:
    await add_users(server, "9001000001")
    async with client_from(server.url, "127.0.0.2") as first, \
            client_from(server.url, "127.0.0.3") as second:
        assert await codes(first, LOGIN, login("9001000001")) == []
        assert await codes(first, LOGIN, login("9009999999")) == ["UserNotFound"]
        assert await codes(first, CREATE, sign_up("9001000002")) == []
        assert await codes(first, LOGIN, login("9001000001")) == ["TooManyRequests"]
        assert await codes(first, CREATE, sign_up("9001000003")) == ["TooManyRequests"]
        # Invalid requests are answered as ever, and not counted.
        assert await codes(first, LOGIN, login("12")) == ["PhoneRegexInvalid"]
        # Another address has its own rate.
        assert await codes(second, LOGIN, login("9001000001")) == []
    assert await server.store.user_by_phone("9001000003") is None


PAUSE_MS = 300


@pytest.mark.parametrize("config_overrides", [{"signin_rate_per_minute": 2,
                                                "signin_refusal_pause_ms": PAUSE_MS}])
async def test_over_sockets_a_refusal_waits_for_the_pause(server: Server) -> None:
    """Served in front of Quart (vpiska/http/json_routes.py), with Retry-After (`codes`
    checks it): a refusal comes no sooner than the pause. (That admitted attempts are not
    held is shown on the virtual clock above: real time only says "no sooner".)"""
    await add_users(server, "9001000001")

    async def timed(client: httpx.AsyncClient, body: dict[str, str]) -> tuple[list[str], float]:
        started = trio.current_time()
        found = await codes(client, LOGIN, body)
        return found, trio.current_time() - started

    async with client_from(server.url, "127.0.0.2") as client:
        for _ in range(2):
            assert (await timed(client, login("9001000001")))[0] == []
        found, took = await timed(client, login("9001000001"))
        assert found == ["TooManyRequests"]
        assert took >= PAUSE_MS / 1000


@pytest.mark.parametrize("config_overrides", [{"signin_rate_per_minute": 0}])
async def test_a_phone_is_refused_from_every_address_after_five_wrong_passwords(
        server: Server) -> None:
    """With the address rate off (0), the per-phone rule still holds."""
    await add_users(server, "9001000001", "9001000002")
    async with client_from(server.url, "127.0.0.2") as guesser, \
            client_from(server.url, "127.0.0.3") as owner:
        for _ in range(5):
            assert await codes(guesser, LOGIN, login("9001000001", "wrong1")) == \
                ["InvalidPassword"]
        assert await codes(guesser, LOGIN, login("9001000001", "wrong1")) == ["TooManyRequests"]
        assert await codes(owner, LOGIN, login("9001000001")) == ["TooManyRequests"]
        assert await codes(owner, LOGIN, login("9001000002")) == []
        for _ in range(20):  # no address rate
            assert await codes(guesser, LOGIN, login("9001000002")) == []


@pytest.mark.parametrize("config_overrides", [{"signin_rate_per_minute": 1,
                                                "trusted_proxies": TRUSTED[:1]}])
async def test_a_trusted_proxy_counts_each_client_by_its_forwarded_address(
        server: Server) -> None:
    """A proxy at 10.0.0.1 is not 127.0.0.1, so the test's own loopback clients are not
    trusted; a trusted one is made by listing 127.0.0.1."""
    await add_users(server, "9001000001")
    async with client_from(server.url, "127.0.0.2") as untrusted:
        assert await codes(untrusted, LOGIN, login("9001000001"),
                           headers={"X-Forwarded-For": "198.51.100.1"}) == []
        assert await codes(untrusted, LOGIN, login("9001000001"),
                           headers={"X-Forwarded-For": "198.51.100.2"}) == ["TooManyRequests"]


@pytest.mark.parametrize("config_overrides", [{
    "signin_rate_per_minute": 1,
    "trusted_proxies": Config.from_env({"TRUSTED_PROXIES": "127.0.0.1"}).trusted_proxies}])
async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate(
        server: Server) -> None:
    await add_users(server, "9001000001")
    async with client_from(server.url, "127.0.0.1") as proxy:
        for client in ("198.51.100.1", "198.51.100.2"):
            assert await codes(proxy, LOGIN, login("9001000001"),
                               headers={"X-Forwarded-For": client}) == []
            assert await codes(proxy, LOGIN, login("9001000001"),
                               headers={"X-Forwarded-For": f"6.6.6.6, {client}"}) == \
                ["TooManyRequests"]


def scraped(page: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", page, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


ATTACKERS = [f"127.0.1.{n}" for n in range(1, 21)]
USERS = [f"127.0.2.{n}" for n in range(1, 11)]
VICTIMS = ["9002000001", "9002000002"]
RATE = 4


@pytest.mark.parametrize("config_overrides", [{"signin_rate_per_minute": RATE}])
async def test_a_storm_of_wrong_logins_spends_no_hash_on_refused_attempts(
        server: Server) -> None:
    """200 wrong logins at once from 20 addresses (4 connections each), at two victims'
    phones, while 10 users log in from other addresses. Passwords verified (argon2 runs,
    counted in /metrics): exactly the 5 wrong ones each victim's phone allows, and the 10
    users'; every other attempt is TooManyRequests, refused before any hash. Every user is
    logged in."""
    legit = [f"90030000{n:02d}" for n in range(len(USERS))]
    await add_users(server, *VICTIMS, *legit)
    before = (await server.http.get("/metrics")).text
    answers: Counter[str] = Counter()
    users_in = 0

    async def attack(address: str) -> None:
        # 80 connections of attackers and 10 of users: more than hypercorn's listen backlog
        # (100) connecting at once overflows it, and the kernel resets some (syncookies).
        async with client_from(server.url, address, connections=4) as client:
            async def one(n: int) -> None:
                answers.update(await codes(client, LOGIN, login(VICTIMS[n % 2], "wrong1")))

            async with trio.open_nursery() as attempts:
                for n in range(10):
                    attempts.start_soon(one, n)

    async def log_in(address: str, phone: str) -> None:
        nonlocal users_in
        async with client_from(server.url, address) as client:
            assert await codes(client, LOGIN, login(phone)) == []
            users_in += 1

    started = trio.current_time()
    with trio.fail_after(WAIT_SECONDS):
        async with trio.open_nursery() as nursery:
            for address in ATTACKERS:
                nursery.start_soon(attack, address)
            for address, phone in zip(USERS, legit, strict=True):
                nursery.start_soon(log_in, address, phone)
    elapsed = trio.current_time() - started
    after = (await server.http.get("/metrics")).text

    assert answers == {"InvalidPassword": 10, "TooManyRequests": 190}
    assert users_in == len(USERS)
    verified = (scraped(after, 'vpiska_password_hashes_total{work="verify"}')
                - scraped(before, 'vpiska_password_hashes_total{work="verify"}'))
    assert verified == 10 + len(USERS)
    refused = {limit: scraped(after, f'vpiska_signin_refused_total{{limit="{limit}"}}')
               - scraped(before, f'vpiska_signin_refused_total{{limit="{limit}"}}')
               for limit in ("address", "phone")}
    assert refused["address"] + refused["phone"] == 190
    # Each address got its burst, and one attempt per interval after it: the rest were
    # refused by the address rate, before even the phone was looked at.
    admitted = len(ATTACKERS) * (RATE + int(elapsed * RATE / 60))
    assert refused["address"] >= 200 - admitted


HOSTILE_FORWARDED = [
    pytest.param("", id="empty"),
    pytest.param(",,, ,", id="only-commas"),
    pytest.param("1.2.3.4" + ", 10.0.0.1" * 1500, id="1500-entries"),
    pytest.param("[::1", id="unclosed-bracket"),
    pytest.param("999.1.1.1, ::ffff:zz", id="not-addresses"),
    pytest.param("1.2.3.4%eth0, fe80::1%eth0", id="zone-ids"),
    pytest.param("\u00ff\u00fe1.2.3.4", id="latin-1-bytes"),
]


@pytest.mark.parametrize("forwarded", HOSTILE_FORWARDED)
@pytest.mark.parametrize("config_overrides", [{
    "signin_rate_per_minute": 2,
    "trusted_proxies": Config.from_env({"TRUSTED_PROXIES": "127.0.0.1"}).trusted_proxies}])
async def test_a_hostile_x_forwarded_for_is_answered_and_counted_somewhere(
        server: Server, forwarded: str, log_lines: list[dict[str, Any]]) -> None:
    """Whatever a trusted peer forwards, the login is answered, the limit still holds (under
    the proxy's own address when no client address can be read) and nothing is logged as an
    error."""
    await add_users(server, "9001000001")
    headers = [("X-Forwarded-For", forwarded.encode("latin-1"))]
    async with client_from(server.url, "127.0.0.1") as proxy:
        found = [await codes(proxy, LOGIN, login("9001000001"), headers=headers)
                 for _ in range(3)]
    assert found[2] == ["TooManyRequests"]
    assert [line for line in log_lines if line["level"] in ("error", "critical")] == []


async def test_phones_whose_places_were_all_given_back_are_forgotten() -> None:
    counters = LocalCounters(Clock(), max_tracked=10)
    limits = SigninLimits(counters, rate_per_minute=0)
    for n in range(100):
        await guess(limits, f"9{n:09d}", wrong=False)
    assert counters.tracked() <= 1
