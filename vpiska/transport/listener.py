"""A listener that takes every connection the kernel has ready in one turn of the loop.

trio's SocketListener ends each `accept` with a checkpoint, so trio's accept loop
(`serve_listeners`, which hypercorn's worker runs) takes one connection per turn of the event
loop: with fifty handshakes in flight, each new connection waited for a whole turn of the other
forty-nine, and every turn paid the loop's own costs (an epoll wait, the run queue) for a
single accept. This one, having waited for a connection as trio's does, takes up to
ACCEPT_BATCH more that are already complete, without waiting, and hands them out at once: what
libuv (Node) does, accepting until the kernel has none. Measured with `bench.compare`'s
handshake step (5,000 WebSockets into one room, 50 in flight): 1.21× the handshakes per second
(docs/transport.md, "Costs it takes out").

The batch is bounded so that one turn never starts an unbounded crowd: admission
(admission.py) still refuses each connection past its limits, as it did one at a time.
"""

from __future__ import annotations

import collections
import socket as stdlib_socket
import types
from typing import Any

import trio

# Connections taken in one turn beyond the one waited for: enough for a storm's arrivals to
# be taken within a few turns, few enough that one turn's handshake starts stay short.
ACCEPT_BATCH = 64


class BatchingListener(trio.abc.Listener[trio.SocketStream]):
    """trio's SocketListener on `socket`, taking the connections ready behind each one it
    waited for (`accept` returns those at once, without a checkpoint: the caller's loop goes
    on in the same turn)."""

    def __init__(self, socket: trio.socket.SocketType) -> None:
        self._listener = trio.SocketListener(socket)
        self.socket = socket
        # The stdlib socket trio's wraps (its `_sock`), to accept without waiting: trio's own
        # accept always yields. Without it (another trio), one connection a turn, as trio does.
        raw = getattr(socket, "_sock", None)
        self._raw = raw if isinstance(raw, stdlib_socket.socket) else None
        self._ready: collections.deque[trio.SocketStream] = collections.deque()

    async def accept(self) -> trio.SocketStream:
        if self._ready:
            return self._ready.popleft()
        stream = await self._listener.accept()
        self._take_ready()
        return stream

    def _take_ready(self) -> None:
        if self._raw is None:
            return
        while len(self._ready) < ACCEPT_BATCH:
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
