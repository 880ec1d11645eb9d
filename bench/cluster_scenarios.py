"""The cluster section: one node against two, same run, same clients (bench/cluster.py).

1. HTTP: `events/range` and `events/get` with one node (pinned to core 0, one wrk of 50
   connections pinned to core 1) and with two (pinned to cores 0 and 1, two wrks of 25
   connections, one per node's port, left to the scheduler since both cores serve). wrk's and
   Redis' CPU are reported. `events/get` asks for one event: the node that does not own it
   reads the view its owner keeps in Redis (vpiska/cluster/views.py). `events/get (121
   events)` asks for every event of the store in turn: each node owns about half of them and
   reads the other's views for the rest. Each setup runs twice: on one shared sqlite file, and
   as separate machines would, on the bench's MongoDB with a DATA_DIR of each node's own (its
   CPU reported).
2. One room of `cluster_n` members: all on one node, against split half and half over two
   nodes (the client alternates ports; the second node shares core 1 with the client). Fan-out
   (delivered msgs/s) and latency at 50 % of the lowest fan-out any repetition of either
   setup reached. Not the median: two nodes deliver ~160,000 msgs/s when the event's owner
   lands on core 0 and ~300,000 when it lands on core 1 (placement is rendezvous hashing over
   node ids, new at each start), and half the median of a run that placed it on core 1 twice
   loaded a repetition on core 0 at ~85 %.
3. Failover: two nodes; the members (and senders) on the node that does not own the event,
   lines at a fixed rate; the owner is SIGKILLed during the window, and the figure is the
   time from the kill to the first line sent after it that reaches a member.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import client, cluster, httpload, mongodb
from bench.scenarios import (
    HTTP_CONNECTIONS,
    LATENCY_LOAD,
    Plan,
    Row,
    Step,
    room_options,
    time_limit,
    window,
)
from bench.seed import CLUSTER_SIDE, Seeds

SETUPS = {"1 node": ["0"], "2 nodes": ["0", "1"]}
# The HTTP step again with the nodes as separate machines: a MongoDB database is all they share.
MONGODB = ", MongoDB"
HTTP_SETUPS = {**SETUPS, **{setup + MONGODB: cores for setup, cores in SETUPS.items()}}
FAILOVER_MEMBERS = 100
FAILOVER_RATE = 50.0  # lines per second: one every 20 ms
KILL_AFTER = 2.0  # seconds into the window


def steps(plan: Plan, seeds: Seeds, rows: list[Row]) -> list[Step]:
    out: list[Step] = []
    for rep in range(plan.cluster_http_repetitions):
        for setup in HTTP_SETUPS:
            out.append(_http_step(setup, rep, plan, seeds, rows))
    for mode in ("fanout", "latency"):
        for rep in range(plan.repetitions):
            for setup in SETUPS:
                out.append(_room_step(mode, setup, rep, plan, seeds, rows))
    for run in range(plan.failover_runs):
        out.append(_failover_step(run, plan, seeds))
    return out


def _event_ids(store: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(store)) as db:
        return [row[0] for row in db.execute("SELECT id FROM events ORDER BY id")]


def _http_step(setup: str, rep: int, plan: Plan, seeds: Seeds, rows: list[Row]) -> Step:
    def run() -> Row:
        with contextlib.ExitStack() as stack:
            mongo = (stack.enter_context(mongodb.running()) if setup.endswith(MONGODB)
                     else None)
            return _http(setup, rep, plan, seeds, rows, mongo)
    return Step(f"cluster http {setup} #{rep + 1}",
                {"scenario": "cluster-http", "server": setup, "endpoint": "events/get",
                 "rep": rep + 1}, run)


def _http(setup: str, rep: int, plan: Plan, seeds: Seeds, rows: list[Row],
          mongo: mongodb.MongoServer | None) -> Row:
    rng, get = httpload.endpoints(seeds.cluster_event_id)[:2]
    spread = httpload.spread(get, httpload.SPREAD, "eventId", _event_ids(seeds.cluster_db))
    with cluster.running(seeds.cluster_db, HTTP_SETUPS[setup], mongo) as c:
        settled = c.settle(CLUSTER_SIDE ** 2)
        ports = [node.port for node in c.nodes]
        pin = "1" if len(ports) == 1 else None
        others = {"redis": c.redis_pid} | ({"mongodb": mongo.pid} if mongo else {})

        def measure(endpoint: httpload.Endpoint) -> Row:
            httpload.wrk_split(ports, endpoint, plan.cluster_warmup_seconds, HTTP_CONNECTIONS,
                               c.pids, pin)
            return settled | httpload.wrk_split(ports, endpoint, plan.cluster_http_seconds,
                                                HTTP_CONNECTIONS, c.pids, pin, others)

        for endpoint in (rng, spread):
            key = {"scenario": "cluster-http", "server": setup, "endpoint": endpoint.name,
                   "rep": rep + 1}
            try:
                rows.append(key | measure(endpoint))
            except Exception as error:  # noqa: BLE001 - recorded; the next one runs
                rows.append(key | {"error": f"{type(error).__name__}: {error}"})
        return measure(get)


def _room_step(mode: str, setup: str, rep: int, plan: Plan, seeds: Seeds,
               rows: list[Row]) -> Step:
    n = plan.cluster_n
    scenario = f"cluster-{mode}"

    def run() -> Row:
        row: Row = {"lease_ttl_s": cluster.LEASE_TTL_SECONDS}
        options = room_options(plan, n)
        if mode == "fanout":
            row["window"] = options["window"] = window(n)
        else:
            slowest = min((r["delivered_per_s"] for r in rows
                           if r["scenario"] == "cluster-fanout" and r["n"] == n
                           and "delivered_per_s" in r), default=None)
            if slowest is None:
                raise RuntimeError("no cluster fan-out result to take the rate from")
            row["rate_msgs_per_s"] = options["rate"] = LATENCY_LOAD * slowest / n
        with cluster.running(seeds.room_db, SETUPS[setup]) as c:
            options["extra_pids"] = c.redis_pid
            ports = [node.port for node in c.nodes]
            result = client.run(mode, ports, [seeds.room_event_id], c.pids, options,
                                time_limit(plan))
            owner = c.owner_of(seeds.room_event_id)
            row["owner_core"] = owner.core if owner else None
        if "extra_cpu" in result:
            result["redis_cpu"] = result.pop("extra_cpu")
        return row | result
    return Step(f"cluster {mode} N={n} {setup} #{rep + 1}",
                {"scenario": scenario, "server": setup, "n": n, "rep": rep + 1}, run)


def _failover_step(run_number: int, plan: Plan, seeds: Seeds) -> Step:
    def run() -> Row:
        return failover(seeds, plan.connect_budget, plan.settle_budget)
    return Step(f"cluster failover #{run_number + 1}",
                {"scenario": "failover", "server": "2 nodes", "rep": run_number + 1}, run)


def failover(seeds: Seeds, connect_budget: float, settle_budget: float) -> Row:
    """Two nodes; members on the gateway; SIGKILL the owner KILL_AFTER s into the window."""
    event_id = seeds.room_event_id
    window_seconds = KILL_AFTER + cluster.LEASE_TTL_SECONDS + 8.0
    with cluster.running(seeds.room_db, ["0", "1"]) as c, \
            tempfile.TemporaryDirectory() as tmp:
        httpload.ask(c.nodes[0].port, httpload.endpoints(event_id)[1])  # activates the event
        owner = c.wait_owner(event_id)
        gateway = next(node for node in c.nodes if node is not owner)
        trace = Path(tmp) / "trace.txt"
        options: dict[str, Any] = {
            "n": FAILOVER_MEMBERS, "senders": 10, "rate": FAILOVER_RATE, "warmup": 1.0,
            "seconds": window_seconds, "in_flight": 50, "connect_budget": connect_budget,
            "settle_budget": settle_budget, "trace_file": str(trace)}
        argv = client.command("trace", [gateway.port], [event_id], [gateway.pid], options)
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as proc:
            assert proc.stderr is not None
            deadline = time.monotonic() + connect_budget + settle_budget + 10
            killed_ns = None
            for line in proc.stderr:
                if line.strip() == "window":
                    time.sleep(KILL_AFTER)
                    killed_ns = cluster.kill(owner)
                    break
                if time.monotonic() > deadline:
                    break
            out, err = proc.communicate(timeout=window_seconds + 60)
        if killed_ns is None:
            raise RuntimeError(f"the client never reached its window: {err[-1000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        new_owner = c.owner_of(event_id)
        sent_all: list[int] = []
        deliveries: list[tuple[int, int]] = []
        for line in trace.read_text().splitlines():
            kind, *numbers = line.split()
            if kind == "S":
                sent_all.append(int(numbers[0]))
            elif kind == "R":
                deliveries.append((int(numbers[0]), int(numbers[1])))
    after = [recv for sent, recv in deliveries if sent > killed_ns]
    sent_after = {sent for sent, _ in deliveries if sent > killed_ns}
    back = (min(after) - killed_ns) / 1e9 if after else None
    # Lines member 0 got that were sent before the kill but arrived after it: delayed, not lost.
    late = sum(1 for sent, recv in deliveries if sent <= killed_ns < recv)
    lines_sent_after = round(FAILOVER_RATE * (window_seconds - KILL_AFTER))
    # Lines member 0 never got: when they were sent, relative to the kill, in ms.
    got = {sent for sent, _ in deliveries}
    missing_at = [round((sent - killed_ns) / 1e6, 3) for sent in sent_all if sent not in got]
    return {"failover_s": back, "lease_ttl_s": cluster.LEASE_TTL_SECONDS,
            "target_s": cluster.LEASE_TTL_SECONDS + 2.0,
            "new_owner_is_gateway": new_owner is gateway,
            "lines_received_after_kill": len(sent_after),
            "lines_sent_after_kill_about": lines_sent_after, "late_deliveries": late,
            "missing_sent_at_ms": missing_at,
            "members": result.get("members"), "disconnected": result.get("disconnected"),
            "undelivered": result.get("undelivered"), "client_cpu": result.get("client_cpu"),
            "other_cpu": result.get("other_cpu")}
