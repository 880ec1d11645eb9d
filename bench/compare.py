"""`python -m bench.compare REV [REV ...]`: vpiska at several git revisions, measured alternately.

What a change bought is a ratio between revisions measured in the same minutes of the same
machine: one revision's rows on a quiet minute and the other's on a busy one would say more
about the machine than about the change. So every repetition runs each revision in turn (A B A
B …), each in a fresh process on core 0, from a detached worktree of that revision
(bench/.cache/revisions/<sha>), with the load generator on core 1 as in `make bench`.

Rows: room fan-out at N=1000 (delivered msgs/s), handshakes (5,000 into one room, 50 in flight;
handshakes/s and RSS per idle socket), and `events/get` and `events/range` on the 10,000-event
map (requests/s). Printed as medians per revision and their ratio to the first revision.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import client, httpload
from bench.scenarios import FULL, HTTP_CONNECTIONS, room_options, time_limit, window
from bench.seed import Seeds, make_seeds
from bench.servers import CACHE, REPO, running, wait_idle

FIGURES = (  # (row, figure)
    ("fanout N=1000", "delivered_per_s"),
    ("handshakes N=5000", "handshakes_per_s"),
    ("handshakes N=5000", "rss_per_connection_kib"),
    ("events/get", "requests_per_s"),
    ("events/range", "requests_per_s"),
)


def checkout(revision: str) -> Path:
    """A detached worktree of `revision`, made once and kept in the bench cache."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout.strip()
    tree = CACHE / "revisions" / sha[:12]
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), sha],
                       cwd=REPO, check=True, capture_output=True)
    return tree


KINDS = ("fanout", "handshakes", "http")


def rows_of(source: Path, seeds: Seeds, kinds: tuple[str, ...] = KINDS
            ) -> dict[str, dict[str, Any]]:
    """One measurement of each row of `kinds` with the vpiska of `source`."""
    plan = FULL
    out: dict[str, dict[str, Any]] = {}
    if "fanout" in kinds:
        options = room_options(plan, 1000) | {"window": window(1000)}
        with running("vpiska", seeds.room_db, source=source) as server:
            out["fanout N=1000"] = client.run("fanout", [server.port], [seeds.room_event_id],
                                              [server.pid], options, time_limit(plan))
    if "handshakes" in kinds:
        with running("vpiska", seeds.room_db, source=source) as server:
            out["handshakes N=5000"] = client.run(
                "connect", [server.port], [seeds.room_event_id], [server.pid],
                room_options(plan, plan.connect_n), time_limit(plan))
    if "http" in kinds:
        with running("vpiska", seeds.map_db, source=source) as server:
            wait_idle(server.pid)
            for endpoint in httpload.endpoints(seeds.map_event_id)[:2]:
                out[endpoint.name] = httpload.wrk(server, endpoint, plan.http_seconds,
                                                  HTTP_CONNECTIONS)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", help="git revisions; the first is the base")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--only", choices=KINDS, action="append",
                        help="measure only these rows (repeatable); default: all")
    args = parser.parse_args()
    kinds = tuple(args.only or KINDS)
    trees = {revision: checkout(revision) for revision in args.revisions}
    seeds = make_seeds(CACHE)
    client.use_members(seeds.member_ids)
    results: dict[str, list[dict[str, dict[str, Any]]]] = {r: [] for r in args.revisions}
    for rep in range(args.repetitions):
        for revision, tree in trees.items():
            print(f"repetition {rep + 1}: {revision}", file=sys.stderr, flush=True)
            results[revision].append(rows_of(tree, seeds, kinds))
    print(table(args.revisions, results))


def table(revisions: list[str], results: dict[str, list[dict[str, dict[str, Any]]]]) -> str:
    def median(revision: str, row: str, figure: str) -> float | None:
        values = [rep[row][figure] for rep in results[revision]
                  if figure in rep.get(row, {})]
        return statistics.median(values) if values else None

    base = revisions[0]
    head = "| row | figure | " + " | ".join(revisions[:1] + [f"{r} (÷ {base})"
                                                          for r in revisions[1:]]) + " |"
    lines = [head, "|" + "---|" * (2 + len(revisions))]
    for row, figure in FIGURES:
        first = median(base, row, figure)
        cells = [_shown(first)]
        for revision in revisions[1:]:
            value = median(revision, row, figure)
            ratio = "" if value is None or not first else f" ({value / first:.3f}×)"
            cells.append(_shown(value) + ratio)
        lines.append(f"| {row} | {figure} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _shown(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


if __name__ == "__main__":
    main()
