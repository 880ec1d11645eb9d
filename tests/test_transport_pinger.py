"""vpiska/transport/pinger.py: one task pings every WebSocket of a worker, on virtual time."""

from __future__ import annotations

import gc
import logging

import pytest
import trio
import trio.testing

from vpiska.transport.pinger import Pinger

INTERVAL = 10.0


class Socket:
    """A WebSocket as the pinger sees it: records when it was pinged; done after `lives` pings."""

    def __init__(self, lives: int = 1000, *, fails: bool = False) -> None:
        self.pinged: list[float] = []
        self._lives = lives
        self._fails = fails

    def send_ping(self) -> bool:
        if self._fails:
            raise OSError("the socket is broken")
        self.pinged.append(trio.current_time())
        self._lives -= 1
        return self._lives > 0


async def test_each_socket_is_pinged_once_an_interval_after_its_accept(
    autojump_clock: trio.testing.MockClock
) -> None:
    pinger = Pinger(INTERVAL)
    first, second = Socket(), Socket()
    start = trio.current_time()
    pinger.add(first)
    await trio.sleep(3)
    pinger.add(second)
    await trio.sleep(3 * INTERVAL - 1)  # wakes between pings, never at the instant of one
    assert first.pinged == [start + INTERVAL * n for n in (1, 2, 3)]
    assert second.pinged == [start + 3 + INTERVAL * n for n in (1, 2)]


async def test_sockets_due_close_together_are_pinged_in_one_go(
    autojump_clock: trio.testing.MockClock
) -> None:
    pinger = Pinger(INTERVAL)
    first, second = Socket(), Socket()
    pinger.add(first)
    await trio.sleep(INTERVAL / 40)  # within the slack of a twentieth of the interval
    pinger.add(second)
    await trio.sleep(INTERVAL * 1.5)
    assert first.pinged == second.pinged


async def test_the_task_ends_when_no_socket_is_left(autojump_clock: trio.testing.MockClock) -> None:
    pinger = Pinger(INTERVAL)
    socket = Socket(lives=2)
    pinger.add(socket)
    await trio.sleep(5 * INTERVAL)
    assert len(socket.pinged) == 2  # done after its second ping: never pinged again
    assert not _pinger_tasks()
    again = Socket()
    pinger.add(again)  # a new socket starts the task again
    await trio.sleep(INTERVAL + 1)
    assert len(again.pinged) == 1


async def test_a_socket_nobody_holds_is_forgotten(autojump_clock: trio.testing.MockClock) -> None:
    pinger = Pinger(INTERVAL)
    pinger.add(Socket())
    gc.collect()
    await trio.sleep(2 * INTERVAL)
    assert not _pinger_tasks()


async def test_one_sockets_fault_is_logged_and_the_others_are_pinged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    pinger = Pinger(INTERVAL)
    broken, fine = Socket(fails=True), Socket()
    pinger.add(broken)
    pinger.add(fine)
    await trio.sleep(2.5 * INTERVAL)
    assert len(fine.pinged) == 2
    faults = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.message for r in faults] == ["websocket ping failed"]  # once: it is forgotten


def _pinger_tasks() -> list[trio.lowlevel.Task]:
    system = trio.lowlevel.current_root_task()
    assert system is not None
    return [task for nursery in system.child_nurseries for task in nursery.child_tasks
            if task.name == "vpiska websocket pinger"]
