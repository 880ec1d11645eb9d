"""vpiska as a cluster on this machine: a Redis of the bench's own and nodes sharing one store.

Each measurement gets a fresh cluster: `redis-server` on a free port of 127.0.0.1 without
persistence (`--save '' --appendonly no`), and nodes started as `python -m vpiska` with
REDIS_URL, each on a port of its own, pinned to the core it is given. Their store is either a
fresh copy of a seeded sqlite store in one DATA_DIR that every node shares, or, as on separate
machines, a fresh seeded database on the bench's MongoDB (bench/mongodb.py) with a DATA_DIR of
each node's own. LEASE_TTL_SECONDS is left at vpiska's
default (reported). A node's id is read from its "serving" JSON log line (`cluster_node`), the
owner of an event from the Redis key `vpiska:lease:{event_id}` ("node_id epoch").

Two nodes on two ports, not WORKERS=2 on one: the load is split evenly over them by the client
(wrk and the WebSocket client alike), where SO_REUSEPORT's hash of 50 connections is not even,
and each node is pinned to a core of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import mongodb
from bench.seed import install_store
from bench.servers import REPO, VPISKA_ENV, free_port, stop, wait_listening
from vpiska.config import Config

LEASE_TTL_SECONDS = Config.lease_ttl_seconds  # vpiska's default, used as is


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    core: str
    node_id: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Cluster:
    redis_port: int
    redis_pid: int
    data_dir: Path
    nodes: list[Node] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes if node.proc.poll() is None]

    def redis(self, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port),
                               *args], capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()

    def owner_of(self, event_id: str) -> Node | None:
        """The node holding the event's lease now, if any."""
        value = self.redis("GET", f"vpiska:lease:{event_id}")
        node_id = value.partition(" ")[0]
        return next((node for node in self.nodes if node.node_id == node_id), None)

    def activity(self) -> int:
        """Ownership changes the nodes have logged so far (activations, fenced rooms)."""
        count = 0
        for node in self.nodes:
            for line in node.log_path.read_text(errors="replace").splitlines():
                if '"event activated"' in line or "fenced" in line:
                    count += 1
        return count

    def leases(self) -> int:
        """Events some node holds a lease on now."""
        done = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port),
                               "--scan", "--pattern", "vpiska:lease:*"],
                              capture_output=True, text=True, timeout=30, check=True)
        return len(done.stdout.split())

    def settle(self, open_events: int, quiet: float = 2.0, budget: float = 60.0
               ) -> dict[str, Any]:
        """Wait until every open event has its owner and none changed hands for `quiet` s.

        Why: a node takes over every orphan it is designated for at once (vpiska/cluster/
        ownership.py `reconcile`); a measurement during that measures the take-over, not serving.
        On a store of 10,000 open events it never ends: the leases churn (bench/README.md)."""
        start = time.monotonic()
        last, since = -1, start
        held = 0
        while time.monotonic() - start < budget:
            now = self.activity()
            held = self.leases()
            if now != last or held < open_events:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return {"settle_s": since - start, "cluster_settled": True}
            time.sleep(0.25)
        return {"settle_s": time.monotonic() - start, "cluster_settled": False,
                "leases_held": held}

    def wait_owner(self, event_id: str, budget: float = 15.0) -> Node:
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            owner = self.owner_of(event_id)
            if owner is not None:
                return owner
            time.sleep(0.05)
        raise RuntimeError(f"no node owns event {event_id} after {budget:g} s")


def _wait_redis(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "PING"],
                              capture_output=True, text=True)
        if done.stdout.strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer on port {port}")


def _node_id(node: Node) -> str:
    """The node's id from its "serving" log line (JSON, `cluster_node`)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in node.log_path.read_text(errors="replace").splitlines():
            if '"serving"' in line:
                with contextlib.suppress(ValueError):
                    node_id = json.loads(line).get("cluster_node")
                    if node_id:
                        return str(node_id)
        time.sleep(0.05)
    raise RuntimeError(f"node on port {node.port} logged no cluster_node")


@contextlib.contextmanager
def running(store_template: Path, cores: list[str],
            mongo: mongodb.MongoServer | None = None,
            env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A Redis and one node per entry of `cores` (pinned there); all stopped on the way out.
    With `mongo`, the nodes share a database seeded from `store_template` on it and nothing
    else; without, they share one copy of the sqlite file. `env` goes on top of VPISKA_ENV."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        data_dir = Path(tmp) / "data"
        store_env: dict[str, str] = {}
        if mongo is None:
            install_store(store_template, data_dir)
        else:
            store_env = {"DB_CONNECTION": mongo.url,
                         "DB_NAME": mongodb.seeded_database(mongo, store_template)}
        redis_port = free_port()
        redis_proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
             "--appendonly", "no", "--dir", tmp, "--logfile", str(Path(tmp) / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cluster = Cluster(redis_port, redis_proc.pid, data_dir)
        try:
            _wait_redis(redis_port)
            for number, core in enumerate(cores):
                port = free_port()
                own_dir = data_dir if mongo is None else Path(tmp) / f"node-{number}-data"
                node_env = dict(os.environ) | VPISKA_ENV | (env or {}) | store_env | {
                    "SERVER_PORT": str(port), "DATA_DIR": str(own_dir),
                    "REDIS_URL": f"redis://127.0.0.1:{redis_port}", "LOG_LEVEL": "INFO"}
                log_path = Path(tmp) / f"node-{number}.log"
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(["taskset", "-c", core, sys.executable, "-m",
                                             "vpiska"], env=node_env, cwd=REPO,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
                node = Node(port, proc, log_path, core)
                cluster.nodes.append(node)
                wait_listening(proc, port, log_path)
                node.node_id = _node_id(node)
            yield cluster
        finally:
            for node in cluster.nodes:
                stop(node.proc)
            keep = os.environ.get("BENCH_CLUSTER_LOGS")  # a folder to keep the nodes' logs in
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                for number, node in enumerate(cluster.nodes):
                    name = f"{len(cluster.nodes)}-node-{number}.log"
                    shutil.copy(node.log_path, Path(keep) / name)
            redis_proc.send_signal(signal.SIGTERM)
            try:
                redis_proc.wait(5)
            except subprocess.TimeoutExpired:
                redis_proc.kill()
                redis_proc.wait()


def kill(node: Node) -> int:
    """SIGKILL the node; the CLOCK_MONOTONIC ns at which it was sent."""
    at = time.monotonic_ns()
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    return at
