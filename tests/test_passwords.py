"""Where the password hashes run (vpiska/auth.py `Passwords`): a suspected guesser's on the
low-priority threads, everyone else's on trio's worker threads. Real argon2 hashes; the
low-priority threads are kept busy by the test, so nothing depends on how long a hash
takes."""

from __future__ import annotations

import threading

import trio
import trio.testing

from vpiska.auth import Passwords
from vpiska.config import Config
from vpiska.fair_slots import SUSPECT_GRANTS
from vpiska.low_priority_threads import open_low_priority_threads

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
        for _ in range(SUSPECT_GRANTS):  # one after another: a suspect after these
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
