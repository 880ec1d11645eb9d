"""Admission: a bound on the WebSocket handshakes a worker has in progress, and a refusal of
the surplus that costs almost nothing.

Why: when a crowd connects at once (a node restarted, a venue's Wi-Fi back), every connection
is accepted and its handshake becomes a task; trio runs every ready task once per turn, so each
hop of a chat line in a running room waits behind all of them, and the handshakes queue behind
one another until the clients time out and come back together. A node that answers the
surplus at once with `503` and `Retry-After` keeps the rooms behind a bounded number of
handshakes and lets the crowd in at the pace it can take them, the clients spreading
themselves out by their jittered retries.

What: a handshake is in progress from the moment its upgrade request is recognised until the
app has accepted it and comes back for the socket's first frame (the member's join is in its
room's queue then, or with `since` answered), refused it, or the connection ended. The count
grows only when handshakes arrive faster than the node finishes them, whatever holds them (the
core, the store, a full room inbox), so it is the node's own word that it cannot take more now.
Past `limit` a new handshake is answered with REFUSAL, written as it is, before anything of the
request is looked at, and the connection closes. Only recognised upgrades are counted and
refused: plain HTTP requests, `/readyz`, `/health` and `/metrics` are served as ever.

Logs: one warning when a worker starts refusing, one line when its handshakes in progress are
down to half the bound again, with how many it refused in between: a storm is two lines, not
one per client. The refusals are counted (metrics.HANDSHAKES_REFUSED).
"""

from __future__ import annotations

import logging

import trio

from vpiska import metrics

log = logging.getLogger(__name__)

# Seconds a refused client is told to wait: short, for the crowd retries with jitter on top
# of it (docs/protocol.md, "Reconnecting") and the node finishes a handshake in well under a
# millisecond once its turn comes.
RETRY_AFTER_SECONDS = 1
# The whole answer, made once: a bodiless status as for every other refused handshake
# (API.md), which an older client takes for "server unavailable".
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nretry-after: %d\r\ncontent-length: 0\r\n"
           b"connection: close\r\n\r\n" % RETRY_AFTER_SECONDS)


class Admission:
    """The handshakes in progress on one worker, at most `limit` of them.

    Every `admit` that returns True is paired with one `finished`, by whoever ends the
    handshake (direct_websocket.py).
    """

    def __init__(self, limit: int) -> None:
        assert limit > 0, "no bound is no Admission at all"
        self.limit = limit
        self.pending = 0  # handshakes in progress
        self._refusing_since: float | None = None  # the first refusal of the burst under way
        self._refused = 0  # in the burst under way

    def admit(self) -> bool:
        """Take a handshake in if fewer than `limit` are in progress; False: answer it
        REFUSAL."""
        if self.pending < self.limit:
            self.pending += 1
            return True
        metrics.HANDSHAKES_REFUSED.inc()
        if self._refusing_since is None:
            self._refusing_since = trio.current_time()
            self._refused = 0
            log.warning("websocket handshakes refused with 503: too many in progress",
                        extra={"in_progress": self.pending,
                               "max_pending_handshakes": self.limit})
        self._refused += 1
        return False

    def finished(self) -> None:
        """A handshake taken in is over (joined, refused by the app, or gone)."""
        assert self.pending > 0
        self.pending -= 1
        if self._refusing_since is not None and self.pending <= self.limit // 2:
            log.info("websocket handshakes admitted again",
                     extra={"refused": self._refused,
                            "seconds": round(trio.current_time() - self._refusing_since, 3)})
            self._refusing_since = None
