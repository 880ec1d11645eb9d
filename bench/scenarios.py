"""What is measured, in which order: the plan of a run as a list of steps.

Interleaving: for every scenario and repetition the servers run one after another (vpiska,
websockets, node-ws, then the next repetition), so a slow minute of the machine hurts all three
alike instead of one. Each step starts its server fresh and runs one load-generator process.

The latency scenario's rate depends on the fan-out results (50 % of the slowest server's median
maximum at the same N), so its steps read the rows the fan-out steps have already added.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from bench import client, httpload
from bench.seed import Seeds
from bench.servers import HTTP_PEERS, SERVERS, Running, running, wait_idle

SENDERS = 10  # members that write; the rest only read (the senders read their lines too)
IN_FLIGHT = 50  # concurrent handshakes while members join
HTTP_CONNECTIONS = 50  # wrk's keep-alive connections
LATENCY_LOAD = 0.5  # latency is measured at this share of the slowest server's maximum


@dataclass(frozen=True)
class Plan:
    name: str
    repetitions: int
    room_sizes: tuple[int, ...]  # N for fan-out
    latency_sizes: tuple[int, ...]  # N for latency (each must be in room_sizes)
    warmup: float  # seconds of load before a measurement window
    seconds: float  # length of a measurement window
    connect_n: int  # connections of the setup-rate / RSS scenario
    connect_budget: float  # at most this long to open N connections (a slow server is cut off)
    settle_budget: float  # at most this long for all members to be in the room
    idle: float  # seconds the connections sit idle before RSS is read
    http_seconds: float
    cluster_http_repetitions: int  # the cluster's HTTP steps: its figures are ratios of two
    cluster_http_seconds: float  # and each of their windows
    cluster_warmup_seconds: float  # discarded before each of them
    cluster_n: int  # members of the cluster section's room
    failover_runs: int  # SIGKILLs of an owner


FULL = Plan("full", repetitions=3, room_sizes=(100, 1000, 5000),
            latency_sizes=(100, 1000, 5000), warmup=1.0, seconds=5.0, connect_n=5000,
            connect_budget=30.0, settle_budget=20.0, idle=2.0, http_seconds=5.0,
            cluster_http_repetitions=5, cluster_http_seconds=10.0, cluster_warmup_seconds=1.0,
            cluster_n=1000, failover_runs=3)
QUICK = Plan("quick", repetitions=1, room_sizes=(100, 1000), latency_sizes=(100,), warmup=0.5,
             seconds=2.0, connect_n=1000, connect_budget=12.0, settle_budget=8.0, idle=1.0,
             http_seconds=2.0, cluster_http_repetitions=1, cluster_http_seconds=2.0,
             cluster_warmup_seconds=0.5, cluster_n=1000, failover_runs=1)


def window(n: int) -> int:
    """Lines in flight in the fan-out scenario: about 16,000 undelivered frames in all, between 4
    and 64 lines. Enough that no server waits for the client (throughput stops growing well
    below it), few enough that a measurement is of the server, not of a queue filling up."""
    return max(4, min(64, -(-16_000 // n)))


Row = dict[str, Any]


@dataclass(frozen=True)
class Step:
    label: str  # for the progress bar
    key: Row  # what the row is about: scenario, server, rep, and N or endpoint
    run: Callable[[], Row]  # measures; returns the figures


def steps(plan: Plan, seeds: Seeds, rows: list[Row]) -> list[Step]:
    """Every measurement of the run, in order; each gives one row of `rows`."""
    out: list[Step] = []
    for rep in range(plan.repetitions):
        for n in plan.room_sizes:
            for server in SERVERS:
                out.append(_room_step("fanout", server, n, rep, plan, seeds, rows))
    for rep in range(plan.repetitions):
        for n in plan.latency_sizes:
            for server in SERVERS:
                out.append(_room_step("latency", server, n, rep, plan, seeds, rows))
    for rep in range(plan.repetitions):
        for server in SERVERS:
            out.append(_room_step("connect", server, plan.connect_n, rep, plan, seeds, rows))
    for rep in range(plan.repetitions):
        out.append(_http_step(rep, plan, seeds, rows))
        out.append(_http_one_event_step(rep, plan, seeds))
        for peer in HTTP_PEERS:
            out.append(_http_peer_step(peer, rep, plan, seeds))
    return out


def _room_step(mode: str, server: str, n: int, rep: int, plan: Plan, seeds: Seeds,
               rows: list[Row]) -> Step:
    def run() -> Row:
        row: Row = {}
        options = room_options(plan, n)
        if mode == "fanout":
            row["window"] = options["window"] = window(n)
        if mode == "latency":
            slowest = slowest_maximum(rows, n)
            if slowest is None:
                raise RuntimeError("no fan-out result at this N to take the rate from")
            row["rate_msgs_per_s"] = options["rate"] = LATENCY_LOAD * slowest / n
        with running(server, seeds.room_db) as srv:
            return row | client.run(mode, [srv.port], [seeds.room_event_id], [srv.pid],
                                    options, time_limit(plan))
    return Step(f"{mode} N={n} {server} #{rep + 1}",
                {"scenario": mode, "server": server, "n": n, "rep": rep + 1}, run)


def room_options(plan: Plan, n: int) -> dict[str, Any]:
    return {"n": n, "in_flight": IN_FLIGHT, "connect_budget": plan.connect_budget,
            "settle_budget": plan.settle_budget, "warmup": plan.warmup,
            "seconds": plan.seconds, "idle": plan.idle, "senders": SENDERS}


def time_limit(plan: Plan) -> float:
    return plan.connect_budget + plan.settle_budget + plan.warmup + plan.seconds + 90


def slowest_maximum(rows: list[Row], n: int, scenario: str = "fanout",
                    servers: tuple[str, ...] = SERVERS) -> float | None:
    """The lowest, over servers, of the median delivered msgs/s at N (None if one is missing)."""
    medians = []
    for server in servers:
        values = [r["delivered_per_s"] for r in rows if r["scenario"] == scenario
                  and r["server"] == server and r["n"] == n and "delivered_per_s" in r]
        if not values:
            return None
        medians.append(statistics.median(values))
    return min(medians)


def _idle_rss(server: Running) -> dict[str, float]:
    """Once the server is idle after its start (startup_s: from listening until then, which
    includes starting every event's actor), its RSS."""
    startup = wait_idle(server.pid)
    return {"startup_s": startup, "rss_idle": psutil.Process(server.pid).memory_info().rss}


def _http_step(rep: int, plan: Plan, seeds: Seeds, rows: list[Row]) -> Step:
    """One server on the seeded map, each endpoint in turn; the rows of the first two
    endpoints go straight into `rows`, the last one is this step's own."""
    def run() -> Row:
        *first, last = httpload.endpoints(seeds.map_event_id)
        with running("vpiska", seeds.map_db) as srv:
            idle_rss = _idle_rss(srv)
            httpload.save_answer(srv, first[1])  # the answer the HTTP peers give
            for endpoint in first:
                key = {"scenario": "http", "server": "vpiska", "endpoint": endpoint.name,
                       "rep": rep + 1}
                try:
                    rows.append(key | idle_rss | httpload.wrk(
                        srv, endpoint, plan.http_seconds, HTTP_CONNECTIONS))
                except Exception as error:  # noqa: BLE001 - recorded; the next endpoint runs
                    rows.append(key | {"error": f"{type(error).__name__}: {error}"})
            return httpload.wrk(srv, last, plan.http_seconds, HTTP_CONNECTIONS)
    return Step(f"http (3 endpoints) #{rep + 1}",
                {"scenario": "http", "server": "vpiska", "endpoint": "users/login",
                 "rep": rep + 1}, run)


def _http_one_event_step(rep: int, plan: Plan, seeds: Seeds) -> Step:
    """vpiska's events/get with one open event in the store (for the p99 against 10,000)."""
    def run() -> Row:
        endpoint = httpload.endpoints(seeds.room_event_id)[1]
        with running("vpiska", seeds.room_db) as srv:
            idle_rss = _idle_rss(srv)
            return idle_rss | httpload.wrk(srv, endpoint, plan.http_seconds, HTTP_CONNECTIONS)
    return Step(f"http events/get, 1 open event #{rep + 1}",
                {"scenario": "http", "server": "vpiska", "endpoint": httpload.ONE_EVENT,
                 "rep": rep + 1}, run)


def _http_peer_step(peer: str, rep: int, plan: Plan, seeds: Seeds) -> Step:
    """A reference server's events/get: same route, same answer, same wrk script."""
    def run() -> Row:
        endpoint = httpload.endpoints(seeds.map_event_id)[1]
        if not httpload.has_answer(seeds.map_event_id):
            with running("vpiska", seeds.map_db) as srv:
                httpload.save_answer(srv, endpoint)
        with running(peer, None) as srv:
            return httpload.wrk(srv, endpoint, plan.http_seconds, HTTP_CONNECTIONS)
    return Step(f"http events/get {peer} #{rep + 1}",
                {"scenario": "http", "server": peer, "endpoint": "events/get", "rep": rep + 1},
                run)
