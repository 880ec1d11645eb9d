"""A listener that takes the connections the kernel has ready in one turn of a loop not busy.

trio's SocketListener ends each `accept` with a checkpoint, so trio's accept loop
(`serve_listeners`, which hypercorn's worker runs) takes one connection per turn of the event
loop: with fifty handshakes in flight, each new connection waited for a whole turn of the other
forty-nine, and every turn paid the loop's own costs (an epoll wait, the run queue) for a
single accept. This one, having waited for a connection as trio's does, takes more that are
already complete, without waiting, and hands them out at once, as libuv (Node) accepts until
the kernel has none: as many as fill the turn up to ACCEPT_BATCH tasks ready to run and
handshakes in progress. A loop with that many of either is busy and takes one connection a
turn, as before, which paced a crowd: with a fixed batch, node A of `bench.storm` (on the
client's core) took 10,000 members in faster than its rooms took their joins, ran 1,024
handshakes at once, answered Redis too late to keep its leases and lost half of its members
before the storm began. Measured with `bench.compare`'s handshake step (5,000 WebSockets into
one room, 50 in flight; docs/transport.md, "Costs it takes out").
"""

from __future__ import annotations

import collections
import socket as stdlib_socket
import types
from typing import Any

import trio

from vpiska.transport.worker_context import current_worker

# A turn takes connections until this many tasks are ready to run (the one waited for always).
ACCEPT_BATCH = 64


class BatchingListener(trio.abc.Listener[trio.SocketStream]):
    """trio's SocketListener on `socket`, taking connections ready behind each one it waited
    for while the loop is not busy (`accept` returns those at once, without a checkpoint: the
    caller's loop goes on in the same turn)."""

    def __init__(self, socket: trio.socket.SocketType) -> None:
        self._listener = trio.SocketListener(socket)
        self.socket = socket
        # The stdlib socket trio's wraps (its `_sock`), to accept without waiting: trio's own
        # accept always yields. Without it (another trio), one connection a turn, as trio does.
        raw = getattr(socket, "_sock", None)
        self._raw = raw if isinstance(raw, stdlib_socket.socket) else None
        self._ready: collections.deque[trio.SocketStream] = collections.deque()
        self._worker = current_worker()  # whose handshakes it paces; None outside a worker

    async def accept(self) -> trio.SocketStream:
        if self._ready:
            return self._ready.popleft()
        stream = await self._listener.accept()
        self._take_ready()
        return stream

    def _take_ready(self) -> None:
        if self._raw is None:
            return
        # A turn is filled up to ACCEPT_BATCH tasks ready and handshakes in progress: a loop
        # with that many of either is busy, and takes one connection a turn, as trio's listener
        # does, which paces a crowd.
        busy = trio.lowlevel.current_statistics().tasks_runnable
        if self._worker is not None:
            busy = max(busy, self._worker.handshakes_in_progress)
        room = ACCEPT_BATCH - busy
        while len(self._ready) < room:
            try:
                sock, _ = self._raw.accept()
            except OSError:
                # None ready (EAGAIN), or an error trio's accept meets again next time and
                # handles its own way (ECONNABORTED skipped, EMFILE raised to the caller).
                return
            self._ready.append(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))

    async def aclose(self) -> None:
        """Close the listener and the connections it took but did not hand out: their peers
        see them closed, as those the kernel still held see the listening socket go."""
        while self._ready:
            self._ready.popleft().socket.close()
        await self._listener.aclose()


class WorkerTrio(types.ModuleType):
    """trio as hypercorn's worker module (hypercorn.trio.run) sees it: trio itself, except
    that the listeners it makes are BatchingListeners."""

    SocketListener = BatchingListener

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


WORKER_TRIO = WorkerTrio("trio")
