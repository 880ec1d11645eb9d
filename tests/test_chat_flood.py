"""ChatFlood: a member's chat token bucket and its line for abuse, on trio's virtual clock.

Rates and times are powers of two, so the bucket's arithmetic is exact and the tests say
precisely when a token is back.
"""

from __future__ import annotations

import trio
from trio.testing import MockClock

from vpiska.actors import ChatFlood
from vpiska.actors.flood import ABUSE_WINDOW

RATE = 4.0  # lines per second: a token every 0.25 s
BURST = 3


async def test_a_burst_is_admitted_at_once(autojump_clock: MockClock) -> None:
    flood = ChatFlood(RATE, BURST)
    assert [flood.admit() for _ in range(BURST + 1)] == [True] * BURST + [False]


async def test_a_token_comes_back_after_one_over_the_rate(autojump_clock: MockClock) -> None:
    flood = ChatFlood(RATE, BURST)
    for _ in range(BURST):
        assert flood.admit()
    await trio.sleep(1 / RATE / 2)
    assert not flood.admit()  # half a token
    await trio.sleep(1 / RATE / 2)
    assert flood.admit()
    assert not flood.admit()


async def test_lines_at_the_rate_are_all_admitted(autojump_clock: MockClock) -> None:
    flood = ChatFlood(RATE, BURST)
    for _ in range(BURST):
        assert flood.admit()
    for _ in range(int(RATE * 30)):  # thirty seconds of steady typing at the rate
        await trio.sleep(1 / RATE)
        assert flood.admit()
    assert not flood.abusive


async def test_an_idle_member_saves_no_more_than_a_burst(autojump_clock: MockClock) -> None:
    flood = ChatFlood(RATE, BURST)
    await trio.sleep(3600)
    assert [flood.admit() for _ in range(BURST + 1)] == [True] * BURST + [False]


async def test_burst_drops_within_the_window_are_abusive(autojump_clock: MockClock) -> None:
    flood = ChatFlood(RATE, BURST)
    for _ in range(BURST):
        assert flood.admit()
    for _ in range(BURST - 1):
        assert not flood.admit()
        assert not flood.abusive
        await trio.sleep(1 / RATE / 4)  # too soon for a token
    assert not flood.admit()
    assert flood.abusive


async def test_drops_exactly_the_window_apart_are_still_abusive(
    autojump_clock: MockClock,
) -> None:
    flood = ChatFlood(RATE, BURST)
    for _ in range(BURST - 1):
        flood.drop()  # an over-long line
        await trio.sleep(ABUSE_WINDOW / (BURST - 1))
    assert not flood.abusive
    flood.drop()
    assert flood.abusive


async def test_drops_spread_over_more_than_the_window_are_not_abusive(
    autojump_clock: MockClock,
) -> None:
    flood = ChatFlood(RATE, BURST)
    spacing = ABUSE_WINDOW / (BURST - 1) + 1 / 64
    for _ in range(BURST * 10):
        flood.drop()
        assert not flood.abusive
        await trio.sleep(spacing)


async def test_the_abuse_window_slides_with_the_latest_drops(autojump_clock: MockClock) -> None:
    flood = ChatFlood(RATE, BURST)
    flood.drop()
    await trio.sleep(ABUSE_WINDOW)
    for _ in range(BURST - 1):
        await trio.sleep(1 / 64)
        flood.drop()
    assert not flood.abusive  # the oldest of the last `burst` drops is too old
    flood.drop()
    assert flood.abusive  # the last `burst` drops came within 1/64 s
