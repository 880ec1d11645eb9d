"""The transport's listener takes what the kernel has ready in one turn of the loop
(vpiska/transport/listener.py), on a real listening socket on 127.0.0.1."""

from __future__ import annotations

import socket
import struct
import types
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import trio
import trio.testing

from vpiska.transport.listener import ACCEPT_BATCH, BatchingListener
from vpiska.transport.worker_context import VpiskaWorkerContext

WAIT_SECONDS = 10
# struct tcp_info (linux/tcp.h): eight one-byte fields, then u32 rto, ato, snd_mss, rcv_mss,
# unacked. For a listening socket `tcpi_unacked` is its accept queue's length.
_TCP_INFO_UNACKED = 8 + 4 * 4


def accept_queue(listening: socket.socket) -> int:
    info = listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, _TCP_INFO_UNACKED)[0])


@asynccontextmanager
async def listening() -> AsyncIterator[tuple[BatchingListener, socket.socket]]:
    """A BatchingListener on a fresh port, and the stdlib socket it listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    listener = BatchingListener(trio.socket.from_stdlib_socket(sock))
    try:
        yield listener, sock
    finally:
        await listener.aclose()


@contextmanager
def clients(listening: socket.socket, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections to `listening`, each complete in the kernel's accept queue."""
    made = []
    try:
        for _ in range(count):
            client = socket.create_connection(listening.getsockname())
            made.append(client)
        yield made
    finally:
        for client in made:
            client.close()


async def queued(listening: socket.socket, count: int) -> None:
    """Until the kernel holds `count` connections for the listener to accept (a loopback
    connect completes them before it returns; this makes sure, as the kernel has no event to
    wait on)."""
    with trio.fail_after(WAIT_SECONDS):
        while accept_queue(listening) < count:  # noqa: ASYNC110
            await trio.sleep(0.01)


def peer_port(stream: trio.SocketStream) -> int:
    return int(stream.socket.getpeername()[1])


async def test_the_connections_ready_behind_the_first_are_handed_out_in_the_same_turn() -> None:
    async with listening() as (listener, sock):
        with clients(sock, 10) as made:
            await queued(sock, 10)
            streams = [await listener.accept()]
            with trio.testing.assert_no_checkpoints():
                streams += [await listener.accept() for _ in range(9)]
            assert sorted(map(peer_port, streams)) == sorted(c.getsockname()[1] for c in made)
            for stream in streams:
                await stream.aclose()


async def test_a_turn_takes_at_most_the_batch_then_the_next_accept_waits_its_turn() -> None:
    async with listening() as (listener, sock):
        with clients(sock, ACCEPT_BATCH + 3):
            await queued(sock, ACCEPT_BATCH + 3)
            streams = [await listener.accept()]
            with trio.testing.assert_no_checkpoints():
                streams += [await listener.accept() for _ in range(ACCEPT_BATCH)]
            with trio.testing.assert_checkpoints():
                streams.append(await listener.accept())  # a turn of its own, and the rest
            with trio.testing.assert_no_checkpoints():
                streams.append(await listener.accept())
            assert len({peer_port(stream) for stream in streams}) == ACCEPT_BATCH + 3
            for stream in streams:
                await stream.aclose()


async def four_more_then_one_a_turn(busier: Callable[[], None]) -> None:
    """With the loop four short of busy, ten connections ready: the one waited for and four
    more in one turn; once `busier` has made it busy, one a turn."""
    async with listening() as (listener, sock):
        with clients(sock, 10):
            await queued(sock, 10)
            streams = [await listener.accept()]
            with trio.testing.assert_no_checkpoints():
                streams += [await listener.accept() for _ in range(4)]
            busier()
            for _ in range(5):
                with trio.testing.assert_checkpoints():
                    streams.append(await listener.accept())
            for stream in streams:
                await stream.aclose()


async def test_a_busy_loop_takes_fewer_a_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A turn is filled up to ACCEPT_BATCH tasks: with `busy` ready to run already, it takes
    the connection waited for and ACCEPT_BATCH - busy more; with ACCEPT_BATCH ready, only the
    one, as trio's listener does. (The loop's statistics are made up: which tasks are ready
    at a given instant is the scheduler's to decide.)"""
    busy = ACCEPT_BATCH - 4

    def loaded() -> Any:
        return types.SimpleNamespace(tasks_runnable=busy)

    monkeypatch.setattr(trio.lowlevel, "current_statistics", loaded)

    def busier() -> None:
        nonlocal busy
        busy = ACCEPT_BATCH

    await four_more_then_one_a_turn(busier)


async def test_a_worker_with_handshakes_in_progress_takes_fewer_a_turn() -> None:
    """The same with handshakes in progress on the listener's worker (admission.py): a crowd
    taken in faster than its handshakes finish is paced one connection a turn."""
    worker = VpiskaWorkerContext(None)  # the worker of this task, as in hypercorn's worker
    admission = worker.admission(1024)
    for _ in range(ACCEPT_BATCH - 4):
        assert admission.admit()

    def busier() -> None:
        for _ in range(4):
            assert admission.admit()

    await four_more_then_one_a_turn(busier)


async def test_closing_the_listener_closes_what_it_took_and_did_not_hand_out() -> None:
    async with listening() as (listener, sock):
        with clients(sock, 3) as made:
            await queued(sock, 3)
            handed = await listener.accept()
            await listener.aclose()
            taken = [c for c in made if c.getsockname()[1] != peer_port(handed)]
            for client in taken:  # their end, not a wait for bytes that never come
                client.settimeout(WAIT_SECONDS)
                assert client.recv(1) == b""
            kept = next(c for c in made if c.getsockname()[1] == peer_port(handed))
            await handed.send_all(b"x")  # the one handed out is its holder's to close
            kept.settimeout(WAIT_SECONDS)
            assert kept.recv(1) == b"x"
            await handed.aclose()


async def test_an_accept_on_a_closed_listener_says_so() -> None:
    async with listening() as (listener, _):
        await listener.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await listener.accept()
