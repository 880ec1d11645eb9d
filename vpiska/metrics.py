"""Prometheus metrics: what an operator graphs and alerts on, served at `GET /metrics`.

Two kinds, chosen by where the truth lives:

- Things that happen (requests, frames, disconnects, store calls, chat batches) are counted
  where they happen, on the process-wide objects below, so each count is one line at its
  place: `metrics.FRAMES_SENT.inc()`.
- Things that are (open events, connected sockets and members, actor restarts) are read from
  the rooms at scrape time through `LiveEvents`, so they can never drift from the rooms they
  describe and the hot path pays nothing for them.

The process-wide objects belong to no registry of their own: `registry_for` puts them, with one
server's `LiveEvents`, in that server's registry, so several servers in one process (the tests)
each scrape their own rooms.

This module imports nothing of vpiska: every layer may count what it does here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

HTTP_REQUESTS = Counter(
    "vpiska_http_requests", "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"], registry=None)
HTTP_DURATION = Histogram(
    "vpiska_http_request_duration_seconds", "Time from a request's start to its response.",
    ["route", "method"], registry=None)
FRAMES_SENT = Counter(
    "vpiska_ws_frames_sent",
    "WebSocket frames delivered to members: written at once, or queued for the socket's writer.",
    registry=None)
WS_DISCONNECTS = Counter(
    "vpiska_ws_disconnects",
    "Sockets the server dropped: slow_consumer (outbox full, 4008), keep_alive (silent for two "
    "ping intervals), flooding (chat over its rate, 4009), overloaded (the event's inbox stayed "
    "full, 1013).", ["reason"], registry=None)
SLOW_CONSUMER_DISCONNECTS = WS_DISCONNECTS.labels(reason="slow_consumer")
KEEP_ALIVE_DISCONNECTS = WS_DISCONNECTS.labels(reason="keep_alive")
FLOODING_DISCONNECTS = WS_DISCONNECTS.labels(reason="flooding")
OVERLOADED_DISCONNECTS = WS_DISCONNECTS.labels(reason="overloaded")
STORE_CALL_DURATION = Histogram(
    "vpiska_store_call_duration_seconds",
    "Store calls as the caller waits for them: a free worker thread, then the database.",
    ["store"], registry=None,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PASSWORD_HASHES = Counter(
    "vpiska_password_hashes",
    "argon2 computations: hash (sign-up, new password, upgrade of an older hash) and verify "
    "(login).", ["work"], registry=None)
SIGNIN_REFUSED = Counter(
    "vpiska_signin_refused",
    "Sign-ups and logins refused with TooManyRequests before any password hash: address (over "
    "SIGNIN_RATE_PER_MINUTE) or phone (too many wrong passwords lately).",
    ["limit"], registry=None)
HANDSHAKES_REFUSED = Counter(
    "vpiska_ws_handshakes_refused",
    "WebSocket handshakes answered 503 with Retry-After at once, because MAX_PENDING_HANDSHAKES "
    "were in progress on the worker (vpiska/transport/admission.py).", registry=None)
CHAT_BATCH_LINES = Histogram(
    "vpiska_chat_batch_lines", "Chat lines written per store write (the actor's group commit).",
    registry=None, buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))

# A `_created` timestamp per series doubles the page for what `process_start_time_seconds` says.
# (The ignore: prometheus_client leaves this function unannotated.)
disable_created_metrics()  # type: ignore[no-untyped-call]

_PROCESS_WIDE: tuple[Collector, ...] = (
    HTTP_REQUESTS, HTTP_DURATION, FRAMES_SENT, WS_DISCONNECTS, STORE_CALL_DURATION,
    CHAT_BATCH_LINES, PASSWORD_HASHES, SIGNIN_REFUSED, HANDSHAKES_REFUSED,
)


@dataclasses.dataclass(frozen=True)
class LiveStats:
    """The rooms as they are at one moment."""

    open_events: int  # each with its actor
    sockets: int  # open WebSockets in event rooms
    members: int  # distinct users per event, summed over events
    restarts: int  # event actors restarted after a crash, since start


class LiveEvents(Collector):
    """The rooms' `LiveStats`, read when Prometheus scrapes (on the trio thread, so the member
    tables are not changing underneath)."""

    def __init__(self, read: Callable[[], LiveStats]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        stats = self._read()
        yield GaugeMetricFamily(
            "vpiska_open_events", "Open events, each with its actor.", value=stats.open_events)
        yield GaugeMetricFamily(
            "vpiska_ws_connected_sockets", "Open WebSockets in event rooms.",
            value=stats.sockets)
        yield GaugeMetricFamily(
            "vpiska_event_members",
            "Distinct users connected to each event, summed over events (the usersCount "
            "clients see; several devices of one user count once).",
            value=stats.members)
        yield CounterMetricFamily(
            "vpiska_actor_restarts", "Event actors restarted after a crash.",
            value=stats.restarts)


def registry_for(live: Callable[[], LiveStats]) -> CollectorRegistry:
    """One server's registry: the process-wide metrics, its rooms (`live`), and the process."""
    registry = CollectorRegistry()
    for collector in _PROCESS_WIDE:
        registry.register(collector)
    registry.register(LiveEvents(live))
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
