"""What is measured, in which order: the plan of a run as a list of steps.

Interleaving: for every scenario and repetition the servers run one after another (vpiska,
websockets, node-ws, then the next repetition), so a slow minute of the machine hurts all three
alike instead of one. Each step starts its server fresh and runs one load-generator process.

The latency scenario's rate depends on the fan-out results (50 % of the slowest server's median
maximum at the same N), so its steps read the rows the fan-out steps have already added.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import httpload
from bench.seed import Seeds
from bench.servers import CLIENT_CORE, REPO, SERVERS, Running, running

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


FULL = Plan("full", repetitions=3, room_sizes=(100, 1000, 5000),
            latency_sizes=(100, 1000, 5000), warmup=1.0, seconds=5.0, connect_n=5000,
            connect_budget=30.0, settle_budget=20.0, idle=2.0, http_seconds=8.0)
QUICK = Plan("quick", repetitions=1, room_sizes=(100, 1000), latency_sizes=(100,), warmup=0.5,
             seconds=2.0, connect_n=1000, connect_budget=12.0, settle_budget=8.0, idle=1.0,
             http_seconds=2.0)


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
    return out


def _room_step(mode: str, server: str, n: int, rep: int, plan: Plan, seeds: Seeds,
               rows: list[Row]) -> Step:
    def run() -> Row:
        row: Row = {}
        options = ["--n", str(n), "--in-flight", str(IN_FLIGHT),
                   "--connect-budget", str(plan.connect_budget),
                   "--settle-budget", str(plan.settle_budget),
                   "--warmup", str(plan.warmup), "--seconds", str(plan.seconds),
                   "--idle", str(plan.idle), "--senders", str(SENDERS)]
        if mode == "fanout":
            row["window"] = window(n)
            options += ["--window", str(window(n))]
        if mode == "latency":
            slowest = slowest_maximum(rows, n)
            if slowest is None:
                raise RuntimeError("no fan-out result at this N to take the rate from")
            row["rate_msgs_per_s"] = rate = LATENCY_LOAD * slowest / n
            options += ["--rate", f"{rate:.3f}"]
        with running(server, seeds.room_db) as srv:
            return row | _loadgen(mode, srv, seeds.room_event_id, options, plan)
    return Step(f"{mode} N={n} {server} #{rep + 1}",
                {"scenario": mode, "server": server, "n": n, "rep": rep + 1}, run)


def slowest_maximum(rows: list[Row], n: int) -> float | None:
    """The lowest, over servers, of the median delivered msgs/s at N (None if one is missing)."""
    medians = []
    for server in SERVERS:
        values = [r["delivered_per_s"] for r in rows if r["scenario"] == "fanout"
                  and r["server"] == server and r["n"] == n and "delivered_per_s" in r]
        if not values:
            return None
        medians.append(statistics.median(values))
    return min(medians)


def _loadgen(mode: str, server: Running, event_id: str, options: list[str],
             plan: Plan) -> Row:
    command = ["taskset", "-c", CLIENT_CORE, sys.executable, "-m", "bench.loadgen", mode,
               "--port", str(server.port), "--event-id", event_id,
               "--server-pid", str(server.pid), *options]
    limit = plan.connect_budget + plan.settle_budget + plan.warmup + plan.seconds + 90
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen {mode} exited {done.returncode}: {done.stderr[-1500:]}")
    result: Row = json.loads(lines[-1])
    return result


def _http_step(rep: int, plan: Plan, seeds: Seeds, rows: list[Row]) -> Step:
    """One server on the seeded map, each endpoint in turn; the rows of the first two
    endpoints go straight into `rows`, the last one is this step's own."""
    def run() -> Row:
        *first, last = httpload.endpoints(seeds.map_event_id)
        with running("vpiska", seeds.map_db) as srv:
            for endpoint in first:
                key = {"scenario": "http", "server": "vpiska", "endpoint": endpoint.name,
                       "rep": rep + 1}
                try:
                    rows.append(key | httpload.wrk(srv, endpoint, plan.http_seconds,
                                                   HTTP_CONNECTIONS))
                except Exception as error:  # noqa: BLE001 - recorded; the next endpoint runs
                    rows.append(key | {"error": f"{type(error).__name__}: {error}"})
            return httpload.wrk(srv, last, plan.http_seconds, HTTP_CONNECTIONS)
    return Step(f"http (3 endpoints) #{rep + 1}",
                {"scenario": "http", "server": "vpiska", "endpoint": "users/login",
                 "rep": rep + 1}, run)
