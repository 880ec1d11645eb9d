"""`python -m bench.cluster_http [--repetitions N] [--store sqlite|mongodb]`: the cluster's HTTP
rows of `make bench` alone (bench/cluster_scenarios.py, the same steps, windows and warm-ups),
with each repetition's ratio and the median of them, the figure BENCHMARKS.md reports.
Default: the full plan's five repetitions.

Why alone: the 2 ÷ 1 node ratio is the one figure of the cluster section whose noise is as
large as its margin (target 1.7×, two nodes can have ~1.83 cores beside both wrks): it takes
five repetitions (the rest of the full run has three) taken when the machine is quiet, and
these alone take ~9 minutes per store, not the whole run's ~40.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from bench import cluster_scenarios, report
from bench.scenarios import FULL, Row
from bench.seed import make_seeds
from bench.servers import BENCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=FULL.cluster_http_repetitions)
    parser.add_argument("--store", choices=("sqlite", "mongodb"), default="mongodb")
    args = parser.parse_args()
    plan = dataclasses.replace(FULL, cluster_http_repetitions=args.repetitions)
    seeds = make_seeds(BENCH / ".cache")
    setups = [setup for setup in cluster_scenarios.HTTP_SETUPS
              if setup.endswith(cluster_scenarios.MONGODB) == (args.store == "mongodb")]
    rows: list[Row] = []
    for rep in range(plan.cluster_http_repetitions):
        for setup in setups:
            step = cluster_scenarios._http_step(setup, rep, plan, seeds, rows)
            rows.append(step.key | step.run())
            for row in rows[-3:]:
                print(f"{time.strftime('%H:%M:%S')} #{row['rep']} {row['server']:18} "
                      f"{row['endpoint']:24} {row.get('requests_per_s', 0):8.0f} req/s "
                      f"nodes CPU {row.get('server_cpu', 0):.2f} "
                      f"others {row.get('other_cpu', 0):.2f}", flush=True)
    (BENCH / ".cache" / "cluster-http.json").write_text(json.dumps(rows))
    for row in report.summarize(rows):
        if "per_node" in row:
            print(f"{row['server']} {row['endpoint']}: {row['per_node']:.2f}× one node "
                  f"(median of {row['repetitions']} repetitions) {'; '.join(row['notes'])}")


if __name__ == "__main__":
    main()
