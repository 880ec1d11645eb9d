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
Past `limit` a new handshake is answered 503, written as it is, before anything of the request
is looked at, and the connection closes. Only recognised upgrades are counted and refused:
plain HTTP requests, `/readyz`, `/health` and `/metrics` are served as ever.

When: a refused client is given a turn (`Retry-After`). A node that finishes handshakes at a
measurable pace (at least PACE_MIN_HANDSHAKES in the last PACE_WINDOW_SECONDS) lines the
refused clients up behind those in progress at that pace: the k-th refusal of a burst is told
to come back when the handshakes in progress and the k − 1 before it should be done. A crowd
told "1 s" all at once comes back together a second later and is refused again but for a
node's worth, and each refusal doubles a client's backoff cap: its last clients wait far
longer than the node needs. Without a pace to go by (a node stalled, or a burst's first
instants) the answer is RETRY_AFTER_SECONDS, the soonest.

Logs: one warning when a worker starts refusing, one line when its handshakes in progress are
down to half the bound again, with how many it refused in between: a storm is two lines, not
one per client. The refusals are counted (metrics.HANDSHAKES_REFUSED).
"""

from __future__ import annotations

import collections
import logging
import math

import trio

from vpiska import metrics

log = logging.getLogger(__name__)

# The soonest a refused client is told to come back, and the latest (a client's own backoff
# reaches 30 s: docs/protocol.md, "Reconnecting").
RETRY_AFTER_SECONDS = 1
MAX_RETRY_AFTER_SECONDS = 30
# The node's pace: handshakes finished in the last PACE_WINDOW_SECONDS, if at least
# PACE_MIN_HANDSHAKES (fewer tell too little: a stall, or the first instants of a burst).
PACE_WINDOW_SECONDS = 1.0
PACE_MIN_HANDSHAKES = 64


def refusal(retry_after: int) -> bytes:
    """The whole answer: a bodiless status as for every other refused handshake (API.md),
    which an older client takes for "server unavailable"."""
    return (b"HTTP/1.1 503 Service Unavailable\r\nretry-after: %d\r\ncontent-length: 0\r\n"
            b"connection: close\r\n\r\n" % retry_after)


_REFUSALS = [refusal(seconds) for seconds in range(MAX_RETRY_AFTER_SECONDS + 1)]


class Admission:
    """The handshakes in progress on one worker, at most `limit` of them.

    Every `admit` that returns True is paired with one `finished`, by whoever ends the
    handshake (direct_websocket.py); one that returns False with one `refusal`.
    """

    def __init__(self, limit: int) -> None:
        assert limit > 0, "no bound is no Admission at all"
        self.limit = limit
        self.pending = 0  # handshakes in progress
        self._refusing_since: float | None = None  # the first refusal of the burst under way
        self._refused = 0  # in the burst under way
        self._finished_at: collections.deque[float] = collections.deque()  # within the window
        self._last_turn = -math.inf  # when the last refused client was told to come back

    def admit(self) -> bool:
        """Take a handshake in if fewer than `limit` are in progress; False: answer it
        `refusal()`."""
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

    def refusal(self) -> bytes:
        """The answer to the handshake just refused, its `Retry-After` the client's turn."""
        now = trio.current_time()
        pace = self._pace(now)
        if pace is None:
            return _REFUSALS[RETRY_AFTER_SECONDS]
        self._last_turn = max(self._last_turn, now + self.pending / pace) + 1 / pace
        wait = math.ceil(self._last_turn - now)
        return _REFUSALS[min(max(wait, RETRY_AFTER_SECONDS), MAX_RETRY_AFTER_SECONDS)]

    def _pace(self, now: float) -> float | None:
        """Handshakes finished per second lately; None if too few to tell."""
        self._forget_before(now - PACE_WINDOW_SECONDS)
        if len(self._finished_at) < PACE_MIN_HANDSHAKES:
            return None
        return len(self._finished_at) / PACE_WINDOW_SECONDS

    def _forget_before(self, moment: float) -> None:
        finished = self._finished_at
        while finished and finished[0] <= moment:
            finished.popleft()

    def finished(self) -> None:
        """A handshake taken in is over (joined, refused by the app, or gone)."""
        assert self.pending > 0
        self.pending -= 1
        now = trio.current_time()
        self._finished_at.append(now)
        self._forget_before(now - PACE_WINDOW_SECONDS)
        if self._refusing_since is not None and self.pending <= self.limit // 2:
            log.info("websocket handshakes admitted again",
                     extra={"refused": self._refused,
                            "seconds": round(trio.current_time() - self._refusing_since, 3)})
            self._refusing_since = None
