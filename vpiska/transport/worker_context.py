"""hypercorn's worker context, knowing its idle connections, its lingering closes, its pinger
and its handshakes in progress.

A shutdown sets the worker's `terminated`. hypercorn's idle timers (a task per connection) saw
it and closed their idle connections; here the keep-alive timer is a deadline on each
connection's read (tcp_server.py), so setting `terminated` closes the idle connections itself.
It also ends the closes that wait for their peers' last bytes (tcp_server.py, "Closing"), so
that neither holds the shutdown.
"""

from __future__ import annotations

from typing import Protocol

import trio
from hypercorn.trio.worker_context import EventWrapper, WorkerContext

from vpiska.transport.admission import Admission
from vpiska.transport.pinger import Pinger


class IdleConnection(Protocol):
    """A connection between requests, which a shutdown closes at once."""

    def close_if_idle(self) -> None:
        """The server is shutting down: close now if idle."""


class _Terminated(EventWrapper):
    """A worker's `terminated`: setting it also closes the idle connections and ends the closes
    waiting for their peers, so that neither holds the shutdown."""

    def __init__(self, idle_connections: set[IdleConnection],
                 lingering: set[trio.CancelScope]) -> None:
        super().__init__()
        self._idle_connections = idle_connections
        self._lingering = lingering

    async def set(self) -> None:
        await super().set()
        for connection in list(self._idle_connections):
            connection.close_if_idle()
        for lingering in list(self._lingering):
            lingering.cancel()


class VpiskaWorkerContext(WorkerContext):
    """hypercorn's worker context, knowing which connections are idle and which closes wait for
    their peers, with the pinger of its WebSockets and its bound on handshakes in progress."""

    def __init__(self, max_requests: int | None) -> None:
        super().__init__(max_requests)
        self.idle_connections: set[IdleConnection] = set()
        self.lingering: set[trio.CancelScope] = set()  # closes waiting for their peers
        self.terminated = _Terminated(self.idle_connections, self.lingering)
        self._pinger: Pinger | None = None
        self._admission: Admission | None = None

    def pinger(self, interval: float) -> Pinger:
        if self._pinger is None:
            self._pinger = Pinger(interval)
        return self._pinger

    def admission(self, limit: int) -> Admission:
        """The worker's bound on WebSocket handshakes in progress (admission.py)."""
        if self._admission is None:
            self._admission = Admission(limit)
        return self._admission
