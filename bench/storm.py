"""The reconnect storm (issue 22): node A's members all come back on node B at once.

Two nodes share a Redis and a store of STORM_ROOMS + STORM_POOL open events (bench/seed.py).
Node A is pinned to the client's core, node B to core 0 alone: B is what is measured. The C
client's `storm` mode (bench/loadgen_c/loadgen.c) then

1. joins the scale's members to A over its rooms (wherever the cluster placed each room's
   owner), v=2 so that every chat line carries its seq, and a few members a room to K rooms
   of the pool that B owns, on B (rooms that never leave B);
2. times `probe` handshakes to B (into A's rooms B owns, 50 in flight) and closes them: the
   handshake rate of this run, which sets the target;
3. sends lines in every room at fixed rates, samples the latency of B's rooms, then sends the
   signal to A: SIGTERM (A hands its rooms over and closes its sockets with 1012) or SIGKILL
   (A's leases run out after the TTL);
4. reconnects every member of A that loses its socket to B with `since=<last seq seen>` after
   a jittered backoff (0 to a cap doubling from 0.5 s to 30 s per failed attempt; a 503's
   Retry-After waited out first), as docs/protocol.md "Reconnecting" asks of clients;
5. once all are back, chats on, then stops and waits until every member has the last line
   any member of its room saw; a gap in a member's seqs is a line it missed.

Targets (issue 22): all back within 1.2 × members ÷ the probe's handshake rate (+ the lease
TTL after SIGKILL), no line missed, B's rooms' p99 during the storm ≤ 5 × before it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench import client, cluster
from bench.scenarios import IN_FLIGHT, Plan, Row, Step
from bench.seed import STORM_ROOMS, Seeds

NODE_A_CORE = "1"  # with the client: A only has to hold its members until the signal
NODE_B_CORE = "0"  # alone: B takes the storm
# A deploy's SIGTERM gets the server's default grace (vpiska/config.py), not the bench's 0.5 s
# (servers.VPISKA_ENV, for servers whose store is thrown away): within 0.5 s node A could not
# send its 10,000 members their 1012 on a core it shares with the client, and they all saw
# their socket end with no close frame.
NODE_ENV = {"SHUTDOWN_GRACE_SECONDS": "10"}
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
BACK_FACTOR = 1.2  # all back within this × members ÷ handshake rate
P99_FACTOR = 5.0  # B's rooms' p99 during the storm ≤ this × before it


@dataclass(frozen=True)
class Scale:
    members: int  # on node A, spread over `rooms`
    rooms: int
    b_rooms: int  # rooms owned by B, with members on B
    b_members: int
    rate: float  # lines per second over A's rooms
    b_rate: float  # lines per second over B's rooms
    probe: int  # handshakes timed on B before the storm
    before: float  # seconds of B's latency sampled before the signal
    budget: float  # at most this long for all to be back (the lease TTL added for SIGKILL)


FULL = Scale(members=10_000, rooms=STORM_ROOMS, b_rooms=10, b_members=200, rate=100.0,
             b_rate=20.0, probe=2000, before=5.0, budget=60.0)
QUICK = Scale(members=1000, rooms=10, b_rooms=4, b_members=40, rate=20.0, b_rate=10.0,
              probe=500, before=3.0, budget=30.0)
START_ATTEMPTS = 3  # clusters started until B owns rooms of its own (_split_cluster)
CONNECT_BUDGET = 60.0
SETTLE_BUDGET = 20.0
AFTER = 2.0  # seconds of chat once all are back


def steps(plan: Plan, seeds: Seeds) -> list[Step]:
    scale = FULL if plan.name == "full" else QUICK
    return [_step(seeds, scale, name) for name in SIGNALS]


def _step(seeds: Seeds, scale: Scale, signal_name: str) -> Step:
    def run() -> Row:
        return storm(seeds, scale, signal_name)
    return Step(f"storm {scale.members} members, {signal_name}",
                {"scenario": "storm", "server": signal_name, "n": scale.members, "rep": 1}, run)


def storm(seeds: Seeds, scale: Scale, signal_name: str) -> Row:
    """One storm; the client's figures, the rooms' placement and the targets' inputs."""
    ttl = cluster.LEASE_TTL_SECONDS
    budget = scale.budget + (ttl if signal_name == "SIGKILL" else 0.0)
    load_before = os.getloadavg()[0]
    with _split_cluster(seeds) as (c, settled, owners):
        node_a, node_b = c.nodes
        a_rooms = list(seeds.storm_event_ids[:scale.rooms])
        b_rooms = [e for e in seeds.storm_event_ids[STORM_ROOMS:]
                   if owners[e] is node_b][:scale.b_rooms]
        probe_rooms = [e for e in a_rooms if owners[e] is node_b] or a_rooms
        options: dict[str, Any] = {
            "n": scale.members, "b_event_ids": ",".join(b_rooms),
            "b_members": len(b_rooms) * (scale.b_members // scale.b_rooms),
            "probe_event_ids": ",".join(probe_rooms), "probe_n": scale.probe,
            "rate": scale.rate, "b_rate": scale.b_rate, "in_flight": IN_FLIGHT,
            "connect_budget": CONNECT_BUDGET, "settle_budget": SETTLE_BUDGET, "warmup": 1.0,
            "before": scale.before, "storm_budget": budget, "after": AFTER,
            "signal_pid": node_a.pid, "signal": int(SIGNALS[signal_name])}
        limit = 3 * CONNECT_BUDGET + SETTLE_BUDGET + scale.before + budget + AFTER + 90
        result = client.run("storm", [node_a.port, node_b.port], a_rooms, [node_b.pid],
                            options, limit)
        if "error" in result:
            raise RuntimeError(f"{result['error']}: {result.get('closed_before_signal')} "
                               "sockets closed by the nodes before it (BENCH_CLUSTER_LOGS=<dir> "
                               "keeps their logs)")
        node_a.proc.wait(30)
    probe_rate = (result.get("probe") or {}).get("handshakes_per_s")
    target = (BACK_FACTOR * result["storm_members"] / probe_rate
              + (ttl if signal_name == "SIGKILL" else 0.0)) if probe_rate else None
    joined = [result.get(group, {}) for group in ("a", "b")]
    return result | settled | {
        "members": joined[0].get("members"),
        "a_handshakes_per_s": joined[0].get("handshakes_per_s"),
        "connect_failures": sum(part.get("connect_failures", 0) for part in joined),
        "all_back": result.get("back_s") is not None, "lease_ttl_s": ttl,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "rooms": scale.rooms, "b_rooms": len(b_rooms),
        "rooms_owned_by_a": sum(owners[e] is node_a for e in a_rooms),
        "rate_msgs_per_s": scale.rate, "b_rate_msgs_per_s": scale.b_rate,
        "handshakes_per_s": probe_rate, "back_target_s": target}


@contextlib.contextmanager
def _split_cluster(seeds: Seeds) -> Iterator[tuple[cluster.Cluster, Row,
                                                   dict[str, cluster.Node | None]]]:
    """Nodes A and B, B owning some of the pool's rooms; the settle figures and each
    event's owner.

    A cluster never moves an owned room to a node that joins later (it takes orphans only), so
    when A's first look for orphans comes before it sees B (A starts first; B's start took 5 s
    on a loaded machine), A owns all 140 events for good and B has no rooms of its own: such a
    cluster is stopped and started again, at most START_ATTEMPTS times."""
    for attempt in range(1, START_ATTEMPTS + 1):
        with cluster.running(seeds.storm_db, [NODE_A_CORE, NODE_B_CORE], env=NODE_ENV) as c:
            node_b = c.nodes[1]
            c.settle(len(seeds.storm_event_ids))
            owners = _owners_with_b(c, seeds.storm_event_ids, node_b)
            settled = c.settle(len(seeds.storm_event_ids))  # B's take-overs done too
            owners = {event_id: c.owner_of(event_id) for event_id in seeds.storm_event_ids}
            if any(owners[e] is node_b for e in seeds.storm_event_ids[STORM_ROOMS:]):
                yield c, settled | {"cluster_starts": attempt}, owners
                return
    raise RuntimeError(f"node B owned none of the pool's rooms in {START_ATTEMPTS} starts "
                       f"({settled})")


def _owners_with_b(c: cluster.Cluster, event_ids: tuple[str, ...], node_b: cluster.Node,
                   budget: float = 15.0) -> dict[str, cluster.Node | None]:
    """Each event's owner, read again until B owns one of the pool's or `budget` passes:
    B takes its share of the orphans a moment after A, once both see each other."""
    deadline = time.monotonic() + budget
    while True:
        owners = {event_id: c.owner_of(event_id) for event_id in event_ids}
        if (any(owners[e] is node_b for e in event_ids[STORM_ROOMS:])
                or time.monotonic() > deadline):
            return owners
        time.sleep(1.0)


def main() -> None:
    """`python -m bench.storm [--quick] [SIGTERM|SIGKILL]`: one storm, its row printed."""
    import argparse
    import json
    import resource

    from bench.seed import make_seeds
    from bench.servers import BENCH, CLIENT_CORE

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("signal", nargs="?", default="SIGTERM", choices=list(SIGNALS))
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    seeds = make_seeds(BENCH / ".cache")
    client.use_members(seeds.member_ids)
    print(json.dumps(storm(seeds, QUICK if args.quick else FULL, args.signal), indent=1))


if __name__ == "__main__":
    main()
