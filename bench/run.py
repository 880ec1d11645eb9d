"""`python -m bench.run [--quick]`: run every step of the plan, then write the three outputs.

The harness itself sits on the client core (core 1) and mostly waits: the servers have core 0
to themselves. A failed step (a server that would not start, a load generator that crashed) is
recorded as an error row and the run goes on, so one broken server still leaves a report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
import traceback
from datetime import UTC, datetime

from tqdm import tqdm

from bench import client, cluster_scenarios, media_scenarios, report, storm
from bench.scenarios import FULL, QUICK, Plan, Row, steps
from bench.seed import make_seeds
from bench.servers import BENCH, CLIENT_CORE, REPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the ~1-minute subset")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: write BENCHMARKS.md and the chart again from "
                             "bench/results.json")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((BENCH / "results.json").read_text())
        plan = QUICK if saved["meta"]["plan"]["name"] == "quick" else FULL
        write(plan, saved["meta"], saved["rows"])
        return
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    # SIGTERM unwinds like Ctrl-C, so the server and load generator of the step are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child

    rows: list[Row] = []
    with tqdm(total=1, desc="seeding stores (cached in bench/.cache)", leave=False) as bar:
        seeds = make_seeds(BENCH / ".cache")
        client.use_members(seeds.member_ids)
        client.binary()  # compiled now, not inside the first measurement
        bar.update()
    plan_steps = (steps(plan, seeds, rows) + media_scenarios.steps(plan, seeds)
                  + cluster_scenarios.steps(plan, seeds, rows) + storm.steps(plan, seeds))
    with tqdm(plan_steps, desc=f"bench ({plan.name})", unit="step") as bar:
        for step in bar:
            bar.set_postfix_str(step.label)
            try:
                rows.append(step.key | step.run())
            except Exception as error:  # noqa: BLE001 - recorded in the report, run goes on
                rows.append(step.key | {"error": f"{type(error).__name__}: {error}"})
                tqdm.write(f"{step.label}: FAILED\n{traceback.format_exc(limit=3)}")

    meta = {"started": started_at, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "duration_s": time.perf_counter() - started, "plan": plan.__dict__,
            "machine": report.machine(), "versions": report.versions()}
    write(plan, meta, rows)


def write(plan: Plan, meta: Row, rows: list[Row]) -> None:
    summary = report.summarize(rows)
    goals = report.targets(summary, plan)
    report.write_json(BENCH / "results.json", meta, rows, summary, goals)
    report.write_chart(BENCH / "results.png", summary)
    report.write_markdown(REPO / "BENCHMARKS.md", meta, summary, goals, rows)
    print(f"{plan.name} run: {meta['duration_s']:.0f} s; wrote BENCHMARKS.md, "
          "bench/results.json, bench/results.png")
    for goal in goals:
        ratio = goal.get("shown") or ("–" if goal["ratio"] is None else f"{goal['ratio']:.2f}×")
        print(f"  {goal['figure']}: {goal['vpiska']} against {goal['reference']} "
              f"{goal['ref']}: {ratio} ({goal['target']}: "
              f"{ {True: 'met', False: 'not met', None: 'no result'}[goal['met']]})")


if __name__ == "__main__":
    main()
