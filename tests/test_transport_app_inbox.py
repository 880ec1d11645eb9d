"""vpiska/transport/app_inbox.py: an app's messages, in order, bounded, without a task switch
when one can be passed at once."""

from __future__ import annotations

from typing import cast

import trio
import trio.testing
from hypercorn.typing import ASGIReceiveEvent

from vpiska.transport.app_inbox import AppInbox


def message(n: int) -> ASGIReceiveEvent:
    return cast("ASGIReceiveEvent", {"type": "http.request", "body": b"%d" % n, "more_body": True})


async def test_messages_that_fit_pass_without_a_checkpoint() -> None:
    inbox = AppInbox(3)
    with trio.testing.assert_no_checkpoints():
        for n in range(3):
            await inbox.put(message(n))
        assert [await inbox.get() for _ in range(3)] == [message(n) for n in range(3)]


async def test_a_waiting_getter_is_given_the_next_message() -> None:
    inbox = AppInbox(1)
    got: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _get_into(inbox, got))
        await trio.testing.wait_all_tasks_blocked()
        with trio.testing.assert_no_checkpoints():
            await inbox.put(message(1))
    assert got == [message(1)]


async def test_a_full_inbox_makes_put_wait_and_keeps_the_order() -> None:
    inbox = AppInbox(2)
    for n in range(2):
        await inbox.put(message(n))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inbox.put, message(2))
        await trio.testing.wait_all_tasks_blocked()
        assert await inbox.get() == message(0)  # makes room for the waiting one
    assert [await inbox.get() for _ in range(2)] == [message(1), message(2)]


async def test_a_waiting_put_and_get_can_be_cancelled(
    autojump_clock: trio.testing.MockClock
) -> None:
    inbox = AppInbox(1)
    with trio.move_on_after(1) as waited:
        await inbox.get()
    assert waited.cancelled_caught
    await inbox.put(message(0))
    with trio.CancelScope() as scope:
        scope.cancel()
        await inbox.put(message(1))
    assert await inbox.get() == message(0)
    with trio.move_on_after(1) as waited:
        await inbox.get()  # the cancelled put left nothing behind
    assert waited.cancelled_caught


async def _get_into(inbox: AppInbox, got: list[object]) -> None:
    got.append(await inbox.get())
