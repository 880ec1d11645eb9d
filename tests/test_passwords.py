"""Where the password hashes run (vpiska/auth.py `Passwords`): a suspected guesser's on the
low-priority threads, everyone else's on trio's worker threads; and a login's turn for its
hash, taken before its store read. Real argon2 hashes; the low-priority threads or the
store are held by the test, so nothing depends on how long a hash takes."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from tests.helpers.fakes import FaultyStore
from vpiska.accounts import Accounts
from vpiska.auth import Passwords, Tokens
from vpiska.config import Config
from vpiska.domain import User, new_id
from vpiska.errors import DomainError, ErrorCode
from vpiska.fair_slots import SUSPECT_WRONG
from vpiska.low_priority_threads import open_low_priority_threads
from vpiska.signin_limits import LocalCounters, SigninLimits
from vpiska.store.memory import MemoryStore

WAIT_SECONDS = 30


async def test_a_guessers_hashes_wait_for_the_low_priority_threads_and_a_users_do_not() -> None:
    config = Config()
    release = threading.Event()
    busy = threading.Barrier(config.password_hash_concurrency + 1, timeout=WAIT_SECONDS)
    guessed: list[tuple[tuple[bool, bool], bool]] = []

    async def guess(passwords: Passwords, stored: str) -> None:
        verified = await passwords.verify("wrong1", stored, "10.0.0.1")
        guessed.append((verified, release.is_set()))

    def occupy() -> None:
        busy.wait()
        release.wait()

    async with open_low_priority_threads(config.password_hash_concurrency) as low:
        passwords = Passwords(config, low)
        stored = await passwords.hash("secret1", "10.0.0.9")
        for _ in range(SUSPECT_WRONG):  # one after another: a suspect after these
            assert await passwords.verify("wrong1", stored, "10.0.0.1") == (False, False)
        async with trio.open_nursery() as nursery:
            try:
                for _ in range(config.password_hash_concurrency):
                    nursery.start_soon(low.run_sync, occupy)
                await trio.to_thread.run_sync(busy.wait)  # every low-priority thread is taken
                nursery.start_soon(guess, passwords, stored)  # a suspect now: it waits
                with trio.fail_after(WAIT_SECONDS):
                    assert await passwords.verify("secret1", stored, "10.0.0.2") == (
                        True, False)
                    assert await passwords.verify("secret1", stored, "10.0.0.2") == (
                        True, False)  # forgiven: still no suspect
                await trio.testing.wait_all_tasks_blocked()
                assert guessed == []
            finally:
                release.set()
    assert guessed == [((False, False), True)]  # verified once a low-priority thread was free


async def test_without_low_priority_threads_every_hash_runs_on_trios_threads() -> None:
    passwords = Passwords(Config())
    stored = await passwords.hash("secret1", "10.0.0.1")
    verified: list[tuple[bool, bool]] = []

    async def guess() -> None:
        verified.append(await passwords.verify("wrong1", stored, "10.0.0.1"))

    async with trio.open_nursery() as nursery:  # the same party twice at once: no suspect
        for _ in range(2):
            nursery.start_soon(guess)
    assert verified == [(False, False)] * 2


async def test_a_storms_logins_read_the_store_in_their_turn_and_a_users_at_once() -> None:
    """Ten wrong logins at once from a guessing address (at ten phones) read the store two
    at a time, in the suspects' 2 slots: the others wait for their turn in the fair queue,
    not in the store's queue ahead of the users' reads (sqlite's is one at a time). A user's
    login from elsewhere reads at once."""
    config = Config.from_env({"PASSWORD_HASH_CONCURRENCY": "2"})
    inner = MemoryStore()
    stored = await Passwords(config).hash("secret1")
    phones = [f"90040000{n:02d}" for n in range(11 + SUSPECT_WRONG)]
    for phone in phones:
        await inner.add_user(User(id=new_id(), name=f"n{phone}", phone=phone,
                                  password_hash=stored))
    store = FaultyStore(inner)
    logged_in = trio.Event()

    async def guess(accounts: Accounts, phone: str) -> None:
        with pytest.raises(DomainError) as refused:
            await accounts.log_in(phone, "wrong1", "10.0.0.1")
        assert refused.value.codes == (ErrorCode.INVALID_PASSWORD,)

    async def log_in(accounts: Accounts) -> None:
        await accounts.log_in(phones[-1], "secret1", "10.0.0.2")
        logged_in.set()

    async with open_low_priority_threads(2) as low:
        accounts = Accounts(store, Tokens(config), Passwords(config, low),
                            SigninLimits(LocalCounters(), 0))
        for phone in phones[11:]:  # one after another: a suspect after these
            await guess(accounts, phone)
        released = store.hang("user_by_phone")
        async with trio.open_nursery() as nursery:
            for phone in phones[:10]:
                nursery.start_soon(guess, accounts, phone)
            await trio.testing.wait_all_tasks_blocked()
            assert store.count("user_by_phone") == SUSPECT_WRONG + 2
            nursery.start_soon(log_in, accounts)
            await trio.testing.wait_all_tasks_blocked()
            assert store.count("user_by_phone") == SUSPECT_WRONG + 3
            released.set()
            with trio.fail_after(WAIT_SECONDS):
                await logged_in.wait()
    assert store.count("user_by_phone") == SUSPECT_WRONG + 11
