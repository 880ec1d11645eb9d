"""Results of a run: medians over repetitions, the target ratios, and the three output files.

`results.json` keeps every raw row (one per measurement) next to the medians, so a figure in
BENCHMARKS.md can always be traced back; `BENCHMARKS.md` is for people; `results.png` shows
delivered msgs/s and p99 latency against room size, one line per server.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.scenarios import HTTP_CONNECTIONS, IN_FLIGHT, LATENCY_LOAD, SENDERS, Plan, Row, window
from bench.servers import BENCH, SERVERS

CLIENT_SATURATED = 0.9  # client CPU (share of one core) from which a row is flagged
MACHINE_BUSY = 0.15  # CPU used by other processes during a window, from which it is flagged
PEER = "node-ws"


def summarize(rows: list[Row]) -> list[Row]:
    """One row per (scenario, server, N or endpoint): the median of every figure over the
    repetitions that produced one, and notes on anything that went wrong in any of them."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        key = (row["scenario"], row["server"], row.get("n"), row.get("endpoint"))
        groups.setdefault(key, []).append(row)
    summary = []
    for (scenario, server, n, endpoint), group in groups.items():
        ok = [r for r in group if "error" not in r]
        medians: Row = {"scenario": scenario, "server": server, "n": n, "endpoint": endpoint,
                        "repetitions": len(ok)}
        for key in sorted({k for r in ok for k, v in r.items() if _is_number(v)} - {"n", "rep"}):
            values = [r[key] for r in ok if _is_number(r.get(key))]
            medians[key] = statistics.median(values)
        medians["notes"] = _notes(group)
        summary.append(medians)
    return summary


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _notes(group: list[Row]) -> list[str]:
    notes = []
    errors = [r["error"] for r in group if "error" in r]
    if errors:
        notes.append(f"{len(errors)} of {len(group)} runs failed: {errors[0][:120]}")
    ok = [r for r in group if "error" not in r]
    if any(r.get("client_cpu", 0) >= CLIENT_SATURATED for r in ok):
        notes.append("client saturated (≥ 90 % of a core)")
    busy = max((r.get("other_cpu", 0) for r in ok), default=0)
    if busy >= MACHINE_BUSY:
        notes.append(f"machine busy: other processes used up to {busy:.0%} of a core")
    joined = [r["members"] for r in ok if "members" in r and r["members"] < r["n"]]
    if joined:
        notes.append(f"only {min(joined)} of {ok[0]['n']} joined within the time allowed")
    if any(r.get("samples") == 0 for r in ok):
        notes.append("no delivery in the window")
    lines = [round(r["sent_per_s"] * r["seconds"]) for r in ok
             if r["scenario"] == "latency" and "sent_per_s" in r]
    if lines and min(lines) < 5:
        notes.append(f"only {min(lines)} line(s) in the window: p99 is one broadcast's spread")
    if any(r.get("settled") is False for r in ok):
        notes.append("not every member was in the room in time")
    for key, what in (("disconnected", "dropped by the server"),
                      ("undelivered", "deliveries missing"),
                      ("connect_failures", "handshakes failed"), ("failed", "failed answers"),
                      ("socket_errors", "socket errors")):
        worst = max((r.get(key, 0) for r in ok), default=0)
        if worst:
            notes.append(f"{worst} {what}")
    return notes


def find(summary: list[Row], scenario: str, server: str, n: int | None = None,
         endpoint: str | None = None) -> Row | None:
    for row in summary:
        if (row["scenario"], row["server"], row["n"], row["endpoint"]) == (
                scenario, server, n, endpoint):
            return row
    return None


def targets(summary: list[Row], plan: Plan) -> list[Row]:
    """The issue's four targets: vpiska ÷ Node `ws` per figure, and whether it is met."""
    specs = [
        ("delivered msgs/s at N=1000", "fanout", 1000, "delivered_per_s", "ratio ≥ 0.4", 0.4,
         True),
        ("p99 latency at N=100, 50 % load (ms)", "latency", 100, "p99_ms", "ratio ≤ 2", 2.0,
         False),
        (f"connection setups/s (N={plan.connect_n}, 50 in flight)", "connect", plan.connect_n,
         "handshakes_per_s", "ratio ≥ 0.5", 0.5, True),
        (f"RSS per idle connection at N={plan.connect_n} (KiB)", "connect", plan.connect_n,
         "rss_per_connection_kib", "vpiska ≤ 24 KiB", None, False),
    ]
    out = []
    for label, scenario, n, key, wanted, bound, higher_is_better in specs:
        ours, peer = find(summary, scenario, "vpiska", n), find(summary, scenario, PEER, n)
        mine = ours.get(key) if ours else None
        theirs = peer.get(key) if peer else None
        ratio = mine / theirs if mine is not None and theirs else None
        if bound is None:  # the RSS target is absolute
            met = None if mine is None else mine <= 24.0
        elif ratio is None:
            met = None
        else:
            met = ratio >= bound if higher_is_better else ratio <= bound
        caveats = [f"{row['server']}: {note}" for row in (ours, peer) if row
                   for note in row["notes"]
                   if not (key == "rss_per_connection_kib" and note.startswith("client"))]
        out.append({"figure": label, "vpiska": mine, PEER: theirs, "ratio": ratio,
                    "target": wanted, "met": met, "caveats": caveats})
    return out


# Environment.

def machine() -> Row:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gib": round(memory / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def versions() -> Row:
    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def command(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "not found"
        return (out.stdout or out.stderr).strip().splitlines()[0]

    ws_package = BENCH / "node_modules" / "ws" / "package.json"
    ws_version = json.loads(ws_package.read_text())["version"] if ws_package.exists() else "?"
    return {
        "vpiska": {name: dist(name) for name in
                   ("vpiska", "trio", "quart-trio", "Quart", "hypercorn", "wsproto")},
        "websockets": {"websockets": dist("websockets"), "asyncio loop": "standard"},
        "node-ws": {"node": command("node", "--version"), "ws": ws_version},
        "load": {"picows": dist("picows"), "uvloop": dist("uvloop"), "psutil": dist("psutil"),
                 "wrk": command("wrk", "-v")},
    }


# Output files.

def write_json(path: Path, meta: Row, rows: list[Row], summary: list[Row],
               goals: list[Row]) -> None:
    path.write_text(json.dumps({"meta": meta, "targets": goals, "summary": summary,
                                "rows": rows}, indent=1) + "\n")


def write_chart(path: Path, summary: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = sorted({r["n"] for r in summary if r["scenario"] in ("fanout", "latency")})
    for server in SERVERS:
        for axis, scenario, key in ((left, "fanout", "delivered_per_s"),
                                    (right, "latency", "p99_ms")):
            points = sorted((r["n"], r[key]) for r in summary
                            if r["scenario"] == scenario and r["server"] == server and key in r)
            if points:
                line, = axis.plot(*zip(*points, strict=True), marker="o", label=server)
                for x, y in points:
                    axis.annotate(f"{y:,.0f}" if y >= 10 else f"{y:.1f}", (x, y), fontsize=7,
                                  color=line.get_color(), textcoords="offset points",
                                  xytext=(5, 3))
    left.set(title="Fan-out: delivered msgs/s (higher is better)", xlabel="members in the room (N)",
             ylabel="chatMessage frames received per second", xscale="log", yscale="log")
    right.set(title=f"p99 send-to-receive at {LATENCY_LOAD:.0%} load (lower is better)",
              xlabel="members in the room (N)", ylabel="ms", xscale="log", yscale="log")
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")
    for axis in (left, right):
        axis.set_xticks(sizes)
        axis.set_xlim(min(sizes, default=1) / 2, max(sizes, default=1) * 2)
        axis.xaxis.set_major_formatter(plain)
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        axis.yaxis.set_major_formatter(plain)
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.grid(True, which="major", alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(path: Path, meta: Row, summary: list[Row], goals: list[Row]) -> None:
    path.write_text("\n".join(_markdown(meta, summary, goals)) + "\n")


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits == 0 and abs(value) < 10:
        digits = 2
    return f"{value:,.{digits}f}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.0%}"


def _rows(summary: list[Row], scenario: str) -> Iterable[Row]:
    order = {name: i for i, name in enumerate(SERVERS)}
    chosen = [r for r in summary if r["scenario"] == scenario]
    return sorted(chosen, key=lambda r: (r["n"] or 0, r["endpoint"] or "", order[r["server"]]))


def _markdown(meta: Row, summary: list[Row], goals: list[Row]) -> list[str]:
    m, v, plan = meta["machine"], meta["versions"], meta["plan"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make {'bench-quick' if plan['name'] == 'quick' else 'bench'}` "
        f"({plan['name']} run: {plan['repetitions']} repetition(s), medians shown) on "
        f"{meta['date']}; the run took {meta['duration_s'] / 60:.1f} min. Raw rows: "
        "`bench/results.json`; chart: `bench/results.png`; method: `bench/README.md`.",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}. Server pinned to core 0, load generator to core 1 (`taskset`).",
        "",
        "| server | versions |",
        "|---|---|",
        "| vpiska | " + ", ".join(f"{k} {x}" for k, x in v["vpiska"].items())
        + f", Python {m['python']}, embedded sqlite store |",
        "| websockets (peer) | " + ", ".join(f"{k} {x}" for k, x in v["websockets"].items())
        + f", Python {m['python']} |",
        "| node-ws (peer) | " + ", ".join(f"{k} {x}" for k, x in v["node-ws"].items()) + " |",
        "| load generator | " + ", ".join(f"{k} {x}" for k, x in v["load"].items()) + " |",
        "",
        "## Targets (vpiska ÷ Node `ws`)",
        "",
        "| figure | vpiska | node-ws | vpiska ÷ node-ws | target | met | caveats |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in goals:
        met = {True: "met", False: "**not met**", None: "no result"}[g["met"]]
        ratio = "–" if g["ratio"] is None else f"{g['ratio']:.2f}×"
        lines.append(f"| {g['figure']} | {_f(g['vpiska'], 1)} | {_f(g[PEER], 1)} | {ratio} | "
                     f"{g['target']} | {met} | {'; '.join(g.get('caveats', []))} |")
    lines += [
        "",
        "CPU columns: CPU seconds ÷ wall seconds of the server and of the load generator during "
        "the measurement window (100 % = one core). A row whose client reached 90 % is flagged: "
        "its figure is a lower bound of the server's. A row during which other processes used "
        f"{MACHINE_BUSY:.0%} of a core or more is flagged *machine busy*: rerun on an idle "
        "machine.",
        "",
        "## 1. Fan-out",
        "",
        f"N members in one room, {SENDERS} of them sending round-robin as fast as the server "
        "absorbs them with a bounded window of lines in flight; figure: chatMessage frames "
        "received per second summed over all N members.",
        "",
        "| N | server | delivered msgs/s | lines sent/s | window (lines) | server CPU | client CPU "
        "| notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(summary, "fanout"):
        lines.append(f"| {r['n']} | {r['server']} | {_f(r.get('delivered_per_s'))} | "
                     f"{_f(r.get('sent_per_s'), 1)} | {window(r['n'])} | "
                     f"{_pct(r.get('server_cpu'))} | {_pct(r.get('client_cpu'))} | "
                     f"{'; '.join(r['notes'])} |")
    lines += [
        "",
        "## 2. Latency",
        "",
        f"Same room, lines sent at a fixed rate: {LATENCY_LOAD:.0%} of the slowest server's "
        "median maximum at that N (divided by N). Figure: time from the send call to the "
        "frame's arrival at each member, over every delivery of a line sent in the window.",
        "",
        "| N | server | lines/s | p50 ms | p99 ms | server CPU | client CPU | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(summary, "latency"):
        lines.append(f"| {r['n']} | {r['server']} | {_f(r.get('rate_msgs_per_s'), 1)} | "
                     f"{_f(r.get('p50_ms'), 2)} | {_f(r.get('p99_ms'), 2)} | "
                     f"{_pct(r.get('server_cpu'))} | {_pct(r.get('client_cpu'))} | "
                     f"{'; '.join(r['notes'])} |")
    lines += [
        "",
        "## 3. Connections",
        "",
        f"N connections into one room, {IN_FLIGHT} handshakes in flight; handshakes/s over all "
        "N and over the first 1000; RSS per idle connection = (server RSS after N idle "
        "connections − RSS before) ÷ N.",
        "",
        "| N | server | handshakes/s | first 1000 | RSS per connection KiB | server CPU "
        "| client CPU | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(summary, "connect"):
        lines.append(f"| {r['n']} | {r['server']} | {_f(r.get('handshakes_per_s'))} | "
                     f"{_f(r.get('handshakes_per_s_first_1000'))} | "
                     f"{_f(r.get('rss_per_connection_kib'), 1)} | "
                     f"{_pct(r.get('server_cpu'))} | {_pct(r.get('client_cpu'))} | "
                     f"{'; '.join(r['notes'])} |")
    lines += [
        "",
        "## 4. HTTP (vpiska only)",
        "",
        f"wrk, 1 thread, {HTTP_CONNECTIONS} keep-alive connections, {plan['http_seconds']:g} s "
        "per endpoint; a store seeded with 10,000 open events (one per owner) on a 100 × 100 "
        "grid. `events/range` asks for a 10 × 10 window (121 events in the answer); `events/get` "
        "one event; `users/login` one user with an argon2id hash (~33 ms of CPU per login, so "
        "its p99 is queueing behind the hash).",
        "",
        "| endpoint | requests/s | p50 ms | p99 ms | answer bytes | server CPU | client CPU "
        "| notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(summary, "http"):
        lines.append(f"| `{r['endpoint']}` | {_f(r.get('requests_per_s'))} | "
                     f"{_f(r.get('p50_ms'), 2)} | {_f(r.get('p99_ms'), 2)} | "
                     f"{_f(r.get('answer_bytes'))} | {_pct(r.get('server_cpu'))} | "
                     f"{_pct(r.get('client_cpu'))} | {'; '.join(r['notes'])} |")
    lines += ["", "![delivered msgs/s and p99 latency against N](bench/results.png)"]
    return lines
