"""One task pings every WebSocket of a worker.

hypercorn starts a task per socket that sleeps and pings: about 4 KiB of every idle socket, and
a closed socket's task slept a whole interval before it noticed, holding its connection (and a
graceful shutdown) that long. `Pinger` pings every socket of the worker once an interval from one
task, started when there is a socket to ping and ended when there is none; it holds no
connection open. Each socket writes its ping straight to the socket when nothing else is being
sent on it, else from a short-lived task of its connection, as hypercorn did. Neither sends the
ping hypercorn sends the instant a socket is accepted.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from typing import Protocol

import trio

log = logging.getLogger(__name__)


class Pingable(Protocol):
    """A WebSocket the worker's pinger pings: hypercorn's stream (ws_stream.py) or a direct one
    (direct_websocket.py)."""

    def send_ping(self) -> bool:
        """Ping the peer now; False once the socket is done."""


class Pinger:
    """Pings every WebSocket of a worker once an interval, the first one interval after its
    accept, from one task. The task runs while there are sockets to ping.

    Resource handling: holds its sockets weakly; a closed one is forgotten at its next turn.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._slack = interval / 20  # sockets due this close together are pinged in one go
        self._due: deque[tuple[float, weakref.ref[Pingable]]] = deque()
        self._running = False

    def add(self, stream: Pingable) -> None:
        self._due.append((trio.current_time() + self._interval, weakref.ref(stream)))
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._run, name="vpiska websocket pinger")

    async def _run(self) -> None:
        try:
            while self._due:
                await trio.sleep_until(self._due[0][0])
                now = trio.current_time()
                while self._due and self._due[0][0] <= now + self._slack:
                    due, ref = self._due.popleft()
                    stream = ref()
                    if stream is not None and self._ping(stream):
                        self._due.append((max(due + self._interval, now), ref))
        finally:
            self._running = False

    @staticmethod
    def _ping(stream: Pingable) -> bool:
        try:
            return stream.send_ping()
        except Exception:  # one socket's fault is not the others'
            log.warning("websocket ping failed", exc_info=True)
            return False
