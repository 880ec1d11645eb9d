"""Prometheus metrics: what an operator graphs and alerts on, served at `GET /metrics`.

Two kinds, chosen by where the truth lives:

- Things that happen (requests, frames, disconnects, store calls, chat batches) are counted
  where they happen, on the process-wide objects below, so each count is one line at its
  place: `metrics.FRAMES_SENT.inc()`.
- Things that are (open events, connected sockets and members, actor restarts) are read from
  the EventSupervisor at scrape time by `LiveEvents`, so they can never drift from the rooms
  they describe and the hot path pays nothing for them.

The process-wide objects belong to no registry of their own: `registry_for` puts them, with one
server's `LiveEvents`, in that server's registry, so several servers in one process (the tests)
each scrape their own rooms.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the actors import this module to count what they do
    from vpiska.actors import EventSupervisor, Room

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
    "ping intervals), flooding (chat over its rate, 4009).", ["reason"], registry=None)
SLOW_CONSUMER_DISCONNECTS = WS_DISCONNECTS.labels(reason="slow_consumer")
KEEP_ALIVE_DISCONNECTS = WS_DISCONNECTS.labels(reason="keep_alive")
FLOODING_DISCONNECTS = WS_DISCONNECTS.labels(reason="flooding")
STORE_CALL_DURATION = Histogram(
    "vpiska_store_call_duration_seconds",
    "Store calls as the caller waits for them: a free worker thread, then the database.",
    ["store"], registry=None,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CHAT_BATCH_LINES = Histogram(
    "vpiska_chat_batch_lines", "Chat lines written per store write (the actor's group commit).",
    registry=None, buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))

# A `_created` timestamp per series doubles the page for what `process_start_time_seconds` says.
disable_created_metrics()  # type: ignore[no-untyped-call]

_PROCESS_WIDE: tuple[Collector, ...] = (
    HTTP_REQUESTS, HTTP_DURATION, FRAMES_SENT, WS_DISCONNECTS, STORE_CALL_DURATION,
    CHAT_BATCH_LINES,
)


class LiveEvents(Collector):
    """The supervisor's rooms, read when Prometheus scrapes (on the trio thread, so the member
    tables are not changing underneath)."""

    def __init__(self, supervisor: EventSupervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        rooms = self._rooms()
        yield GaugeMetricFamily(
            "vpiska_open_events", "Open events, each with its actor.",
            value=self._supervisor.open_events)
        yield GaugeMetricFamily(
            "vpiska_ws_connected_sockets", "Open WebSockets in event rooms.",
            value=sum(len(sockets) for room in rooms for sockets in room.members.values()))
        yield GaugeMetricFamily(
            "vpiska_event_members",
            "Distinct users connected to each event, summed over events (the usersCount "
            "clients see; several devices of one user count once).",
            value=sum(room.users_count for room in rooms))
        yield CounterMetricFamily(
            "vpiska_actor_restarts", "Event actors restarted after a crash.",
            value=self._supervisor.restarts)

    def _rooms(self) -> list[Room]:
        # Every open event with a live room is on the map; a failed room has no members left.
        everywhere = self._supervisor.in_range(-math.inf, math.inf, -math.inf, math.inf)
        return [room for spot in everywhere
                if (room := self._supervisor.room(spot.event_id)) is not None]


def registry_for(supervisor: EventSupervisor) -> CollectorRegistry:
    """One server's registry: the process-wide metrics, its rooms, and the process itself."""
    registry = CollectorRegistry()
    for collector in _PROCESS_WIDE:
        registry.register(collector)
    registry.register(LiveEvents(supervisor))
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
