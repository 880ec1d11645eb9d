"""The reconnect storm's part of BENCHMARKS.md (bench/storm.py): its targets and its table.

Apart from report.py because the storm's rows are read differently: one run per signal, the
targets computed from figures of the same run (its own handshake rate, its own p99 before the
signal), not from another server's row.
"""

from __future__ import annotations

from typing import Any

from bench.scenarios import Row
from bench.storm import BACK_FACTOR, P99_FACTOR, SIGNALS


def _runs(summary: list[Row]) -> list[Row]:
    return [r for r in summary if r["scenario"] == "storm"]


def targets(summary: list[Row]) -> list[Row]:
    """Three targets per signal, in report.targets' shape."""
    out: list[Row] = []

    def add(figure: str, mine: Any, ref_label: str, ref: Any, target: str, met: bool | None,
            run: Row, ratio: float | None = None, shown: str | None = None) -> None:
        out.append({"figure": figure, "vpiska": mine, "reference": ref_label, "ref": ref,
                    "ratio": ratio, "shown": shown, "target": target, "met": met,
                    "caveats": [f"{run['server']}: {note}" for note in run["notes"]]})

    for run in _runs(summary):
        name, n = run["server"], run["n"]
        kill = " + lease TTL" if name == "SIGKILL" else ""
        back, goal = run.get("back_s"), run.get("back_target_s")
        if back is None and run.get("not_back"):
            add(f"storm, {name}: {n:,} members back on node B (s)", run.get("storm_seconds"),
                "the budget", None, f"≤ {BACK_FACTOR:g} × N ÷ handshakes/s{kill}", False, run,
                shown=f"{run['not_back']:,} never back")
        else:
            add(f"storm, {name}: {n:,} members back on node B (s)", back,
                f"{BACK_FACTOR:g} × N ÷ {_number(run.get('handshakes_per_s'))} handshakes/s"
                + kill, goal, f"≤ {BACK_FACTOR:g} × N ÷ handshakes/s{kill}",
                None if back is None or goal is None else back <= goal, run,
                ratio=back / goal if back is not None and goal else None)
        missed = run.get("missed_lines")
        add(f"storm, {name}: chat lines missed (sum over members)", missed, "none", 0, "0",
            None if missed is None else missed == 0, run,
            shown=None if missed is None else f"max {run.get('missed_max_per_member')} a member")
        during, before = run.get("during_p99_ms"), run.get("before_p99_ms")
        ratio = during / before if during is not None and before else None
        add(f"storm, {name}: p99 of node B's own rooms during the storm (ms)", during,
            "before it", before, f"≤ {P99_FACTOR:g}× before",
            None if ratio is None else ratio <= P99_FACTOR, run, ratio=ratio)
    return out


def _number(value: Any, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _dropped(run: Row) -> list[str]:
    """Sockets that should have stayed open and did not."""
    notes = []
    if run.get("closed_before_signal"):
        notes.append(f"{run['closed_before_signal']} sockets closed before the signal")
    if run.get("b_disconnected"):
        notes.append(f"{run['b_disconnected']} of B's own members dropped")
    if run.get("closed_at_end"):
        notes.append(f"{run['closed_at_end']} members back but closed again at the end")
    return notes


def markdown(summary: list[Row], rows: list[Row]) -> list[str]:
    """The section: how the storm runs, then one row per signal."""
    runs = {r["server"]: r for r in _runs(summary)}
    if not runs:
        return []
    any_run = next(iter(runs.values()))
    lines = [
        "",
        "### Reconnect storm",
        "",
        f"Two nodes (A on the client's core 1, B alone on core 0); {any_run['n']:,} members "
        f"on A over {_number(any_run.get('rooms'))} rooms placed by the cluster, and "
        f"{_number(any_run.get('b_rooms'))} rooms owned by B with members on B, all v=2 and "
        f"chatting ({_number(any_run.get('rate_msgs_per_s'))} and "
        f"{_number(any_run.get('b_rate_msgs_per_s'))} lines/s). B's handshake rate is timed "
        "first (the probe: handshakes into A's rooms B owns, 50 in flight). Then A gets the "
        "signal; every member of A that loses its socket reconnects to B with "
        "`since=<last seq seen>` after a jittered backoff (0 to 0.5 s, doubling per failed "
        "attempt, a 503's Retry-After first). *Back*: every member open on B at once; "
        "*missed*: seqs a member never got (gaps the catch-up did not fill, and the room's "
        "last lines once the chat stopped). B CPU: node B's share of its core from the signal "
        "until all were back. Load average: the machine's, before and after the run (two cores: "
        "above 2, other work shared them). bench/storm.py.",
        "",
        "| signal | back s | target s | back p50 / p99 s | handshakes/s | close codes "
        "| reconnects (refused) | missed (max a member) | duplicates | B p99 before / during "
        "ms | B RSS before / peak MiB | B CPU | load average | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SIGNALS:
        raw = next((r for r in rows if r.get("scenario") == "storm" and r["server"] == name),
                   None)
        if raw is None:
            continue
        if "error" in raw:
            lines.append(f"| {name} | failed: {raw['error'][:100]} |" + " |" * 12)
            continue
        codes = ", ".join(f"{'none' if code == '0' else code}: {count}"
                          for code, count in raw.get("close_codes", {}).items())
        back = raw.get("back_s")
        lines.append(
            f"| {name} | {_number(back, 2) if back is not None else 'not all'} | "
            f"{_number(raw.get('back_target_s'), 2)} | {_number(raw.get('back_p50_s'), 2)} / "
            f"{_number(raw.get('back_p99_s'), 2)} | {_number(raw.get('handshakes_per_s'))} | "
            f"{codes} | {raw.get('reconnect_attempts')} ({raw.get('refused')}) | "
            f"{raw.get('missed_lines')} ({raw.get('missed_max_per_member')}) | "
            f"{raw.get('duplicates')} | {_number(raw.get('before_p99_ms'), 1)} / "
            f"{_number(raw.get('during_p99_ms'), 1)} | "
            f"{_number(raw.get('rss_before', 0) / 2**20, 1)} / "
            f"{_number(raw.get('rss_peak', 0) / 2**20, 1)} | "
            f"{_number(100 * raw.get('server_cpu', 0))} % | "
            f"{' → '.join(map(str, raw.get('load_average', []))) or '–'} | "
            f"{'; '.join(runs[name]['notes'] + _dropped(raw)) or '–'} |")
    return lines
