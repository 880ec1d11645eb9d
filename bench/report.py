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

from bench import storm_report
from bench.cluster_scenarios import MONGODB
from bench.httpload import ONE_EVENT, SPREAD
from bench.scenarios import HTTP_CONNECTIONS, IN_FLIGHT, LATENCY_LOAD, SENDERS, Plan, Row, window
from bench.seed import MAP_SIDE
from bench.servers import ALL_SERVERS, BENCH, HTTP_PEERS, SERVERS

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
        for name in sorted({k for r in ok for k, v in r.items() if _is_number(v)}
                           - {"n", "rep"}):
            values = [r[name] for r in ok if _is_number(r.get(name))]
            medians[name] = statistics.median(values)
        medians["notes"] = _notes(group)
        summary.append(medians)
    _pair_cluster_http(rows, summary)
    return summary


def _pair_cluster_http(rows: list[Row], summary: list[Row]) -> None:
    """Give each two-node HTTP row `per_node`: the median over repetitions of its requests/s
    ÷ one node's in the same repetition. Each repetition measures one node and then two,
    minutes apart at most, while a run's repetitions lie up to half an hour apart on a
    machine shared with other jobs: one node's figure alone moved ±15 % between repetitions
    of one run, which a ratio of medians carries whole and a ratio of neighbours cancels."""
    measured = {(r["server"], r["endpoint"], r["rep"]): r["requests_per_s"] for r in rows
                if r["scenario"] == "cluster-http" and "requests_per_s" in r}
    for row in summary:
        if row["scenario"] != "cluster-http" or not row["server"].startswith("2 nodes"):
            continue
        one_node = "1 node" + row["server"].removeprefix("2 nodes")
        ratios = [value / measured[(one_node, endpoint, rep)]
                  for (server, endpoint, rep), value in measured.items()
                  if server == row["server"] and endpoint == row["endpoint"]
                  and measured.get((one_node, endpoint, rep))]
        if ratios:
            row["per_node"] = statistics.median(ratios)


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
    joined = [r["members"] for r in ok if "members" in r and r.get("n")
              and r["members"] < r["n"]]
    if joined:
        notes.append(f"only {min(joined)} of {ok[0]['n']} joined within the time allowed")
    if any(r.get("cluster_settled") is False for r in ok):
        notes.append("the cluster had not settled (leases still changing hands)")
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


def _get(summary: list[Row], scenario: str, server: str, key: str, n: int | None = None,
         endpoint: str | None = None) -> tuple[Any, Row | None]:
    row = find(summary, scenario, server, n, endpoint)
    return (row.get(key) if row else None), row


def _caveats(rows: list[Row | None], skip_client: bool = False) -> list[str]:
    return [f"{row['server']}: {note}" for row in rows if row for note in row["notes"]
            if not (skip_client and note.startswith("client"))]


def targets(summary: list[Row], plan: Plan) -> list[Row]:
    """Every target of the issues: the figure, what it is compared with, the ratio (or the
    difference, for the cluster's p99), the target and whether it is met."""
    out: list[Row] = []

    def add(figure: str, mine: Any, ref_label: str, ref: Any, target: str,
            test: Any, rows: list[Row | None], ratio: float | None = None,
            shown: str | None = None, skip_client: bool = False) -> None:
        if ratio is None and mine is not None and ref:
            ratio = mine / ref
        met = None if mine is None or (ratio is None and shown is None) else bool(
            test(mine, ref, ratio))
        out.append({"figure": figure, "vpiska": mine, "reference": ref_label, "ref": ref,
                    "ratio": ratio, "shown": shown, "target": target, "met": met,
                    "caveats": _caveats(rows, skip_client)})

    at_least = {bound: (lambda m, r, q, b=bound: q >= b) for bound in (0.5, 0.8, 1.0, 1.3,
                                                                        1.5, 1.7)}
    # WebSocket, against Node's ws.
    mine, a = _get(summary, "fanout", "vpiska", "delivered_per_s", 1000)
    ref, b = _get(summary, "fanout", PEER, "delivered_per_s", 1000)
    add("fan-out: delivered msgs/s at N=1000", mine, "node-ws", ref, "≥ 1.0× node-ws",
        at_least[1.0], [a, b])
    mine, a = _get(summary, "latency", "vpiska", "p99_ms", 100)
    ref, b = _get(summary, "latency", PEER, "p99_ms", 100)
    add("p99 latency at N=100, 50 % load (ms)", mine, "node-ws", ref, "≤ 2× node-ws",
        lambda m, r, q: q <= 2.0, [a, b])
    mine, a = _get(summary, "connect", "vpiska", "handshakes_per_s", plan.connect_n)
    ref, b = _get(summary, "connect", PEER, "handshakes_per_s", plan.connect_n)
    add(f"handshakes/s (N={plan.connect_n}, {IN_FLIGHT} in flight)", mine, "node-ws", ref,
        "≥ 0.5× node-ws", at_least[0.5], [a, b])
    mine, a = _get(summary, "connect", "vpiska", "rss_per_connection_kib", plan.connect_n)
    ref, b = _get(summary, "connect", PEER, "rss_per_connection_kib", plan.connect_n)
    add(f"RSS per idle WebSocket at N={plan.connect_n} (KiB)", mine, "node-ws", ref,
        "≤ 24 KiB", lambda m, r, q: m <= 24.0, [a, b], skip_client=True)
    # HTTP, against the raw ASGI app on stock hypercorn.
    floor, f = _get(summary, "http", "hypercorn-raw", "requests_per_s", endpoint="events/get")
    mine, a = _get(summary, "http", "vpiska", "requests_per_s", endpoint="events/get")
    add("`events/get` requests/s", mine, "hypercorn-raw", floor, "≥ 1.3× hypercorn-raw",
        at_least[1.3], [a, f])
    mine, a = _get(summary, "http", "hypercorn-raw+adapter", "requests_per_s",
                   endpoint="events/get")
    add("raw app under vpiska's adapter, requests/s", mine, "hypercorn-raw", floor,
        "≥ 1.5× hypercorn-raw", at_least[1.5], [a, f])
    mine, a = _get(summary, "http", "vpiska", "requests_per_s", endpoint="events/range")
    add("`events/range` (121 events) requests/s", mine, "hypercorn-raw", floor,
        "≥ 0.8× hypercorn-raw", at_least[0.8], [a, f])
    mine, a = _get(summary, "http", "vpiska", "p99_ms", endpoint="events/get")
    ref, b = _get(summary, "http", "vpiska", "p99_ms", endpoint=ONE_EVENT)
    add("`events/get` p99 with 10,000 open events (ms)", mine, "the same with 1 open event",
        ref, "≤ 1.5×", lambda m, r, q: q <= 1.5, [a, b])
    # The cluster.
    for store in ("", MONGODB):
        for endpoint in ("events/get", SPREAD, "events/range"):
            mine, a = _get(summary, "cluster-http", "2 nodes" + store, "requests_per_s",
                           endpoint=endpoint)
            ref, b = _get(summary, "cluster-http", "1 node" + store, "requests_per_s",
                          endpoint=endpoint)
            add(f"cluster `{endpoint}` requests/s, 2 nodes{store}", mine, "1 node" + store, ref,
                "≥ 1.7× 1 node", at_least[1.7], [a, b],
                ratio=a.get("per_node") if a else None)
    mine, a = _get(summary, "cluster-latency", "2 nodes", "p99_ms", plan.cluster_n)
    ref, b = _get(summary, "cluster-latency", "1 node", "p99_ms", plan.cluster_n)
    diff = mine - ref if mine is not None and ref is not None else None
    add(f"cluster p99 at N={plan.cluster_n}, 50 % load, members over 2 nodes (ms)", mine,
        "all on 1 node", ref, "≤ 1 node + 2 ms", lambda m, r, q: diff is not None and diff <= 2,
        [a, b], shown=None if diff is None else f"{diff:+.2f} ms")
    mine, a = _get(summary, "failover", "2 nodes", "failover_s")
    ttl = a.get("lease_ttl_s") if a else None
    add("failover: SIGKILL of the owner to the first line delivered again (s)", mine,
        "lease TTL", ttl, "≤ TTL + 2 s", lambda m, r, q: r is not None and m <= r + 2.0, [a])
    return out + storm_report.targets(summary)


def rss_per_open_event(summary: list[Row]) -> float | None:
    """KiB of vpiska's idle RSS per open event: the 10,000-event store against the 1-event one."""
    many, _ = _get(summary, "http", "vpiska", "rss_idle", endpoint="events/get")
    one, _ = _get(summary, "http", "vpiska", "rss_idle", endpoint=ONE_EVENT)
    if many is None or one is None:
        return None
    return float((many - one) / (MAP_SIDE * MAP_SIDE - 1) / 1024)


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
        "http references": {"hypercorn": dist("hypercorn"), "trio": dist("trio"),
                            "starlette": dist("starlette"), "uvicorn": dist("uvicorn"),
                            "uvloop": dist("uvloop"), "httptools": dist("httptools"),
                            "go": command("go", "version")},
        "load": {"C client": "bench/loadgen_c, " + command("gcc", "--version") + " -O2",
                 "wrk": command("wrk", "-v").split(" Copyright")[0],
                 "psutil": dist("psutil")},
        "cluster": {"redis-server": command("redis-server", "--version")},
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


PERSIST_HEADING = "## 7. Chat persistence"  # bench/persist.py's section, written after


def write_markdown(path: Path, meta: Row, summary: list[Row], goals: list[Row],
                   rows: list[Row]) -> None:
    """Write the file; an earlier persistence section (bench/persist.py's) is kept at its end
    until persist.py replaces it."""
    old = path.read_text() if path.exists() else ""
    kept = old[old.index(PERSIST_HEADING):] if PERSIST_HEADING in old else ""
    text = "\n".join(_markdown(meta, summary, goals, rows)) + "\n"
    path.write_text(text + ("\n" + kept if kept else ""))


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits == 0 and abs(value) < 10:
        digits = 2
    return f"{value:,.{digits}f}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.0%}"


ORDER = {name: i for i, name in enumerate((*ALL_SERVERS, "1 node", "2 nodes"))}


def _rows(summary: list[Row], scenario: str) -> Iterable[Row]:
    chosen = [r for r in summary if r["scenario"] == scenario]
    return sorted(chosen, key=lambda r: (r["n"] or 0, r["endpoint"] or "",
                                         ORDER.get(r["server"], 99)))


def _ratio(value: Any, ref: Any) -> str:
    return "–" if value is None or not ref else f"{value / ref:.2f}×"


def _busy_rows(summary: list[Row]) -> int:
    return sum(1 for r in summary if any(n.startswith("machine busy") for n in r["notes"]))


def _markdown(meta: Row, summary: list[Row], goals: list[Row], rows: list[Row]) -> list[str]:
    m, v, plan = meta["machine"], meta["versions"], meta["plan"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make {'bench-quick' if plan['name'] == 'quick' else 'bench'}` "
        f"({plan['name']} run: {plan['repetitions']} repetition(s), medians shown); the run "
        f"started {meta.get('started', meta['date'])} and ended {meta['date']} "
        f"({meta['duration_s'] / 60:.1f} min). Raw rows: `bench/results.json`; chart: "
        "`bench/results.png`; method: `bench/README.md`.",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}, shared with other jobs: {_busy_rows(summary)} of {len(summary)} "
        "figures below are flagged *machine busy* (other processes used ≥ 15 % of a core "
        "during their window). Servers pinned to core 0, clients to core 1 (`taskset`) unless "
        "a section says otherwise.",
        "",
        "| what | versions |",
        "|---|---|",
        "| vpiska | " + ", ".join(f"{k} {x}" for k, x in v["vpiska"].items())
        + f", Python {m['python']}, embedded sqlite store |",
        "| websockets (peer) | " + ", ".join(f"{k} {x}" for k, x in v["websockets"].items())
        + f", Python {m['python']} |",
        "| node-ws (peer) | " + ", ".join(f"{k} {x}" for k, x in v["node-ws"].items()) + " |",
    ]
    for key in ("http references", "load", "cluster"):
        if key in v:
            lines.append(f"| {key} | " + ", ".join(f"{k} {x}" for k, x in v[key].items())
                         + " |")
    lines += [
        "",
        "## Targets",
        "",
        "| figure | vpiska | compared with | ratio | target | met | caveats |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in goals:
        met = {True: "met", False: "**not met**", None: "no result"}[g["met"]]
        ratio = g.get("shown") or ("–" if g["ratio"] is None else f"{g['ratio']:.2f}×")
        lines.append(f"| {g['figure']} | {_f(g['vpiska'], 1)} | {g['reference']}: "
                     f"{_f(g['ref'], 1)} | {ratio} | {g['target']} | {met} | "
                     f"{'; '.join(g.get('caveats', []))} |")
    per_event = rss_per_open_event(summary)
    ws_rows = [r for r in summary if r["scenario"] in ("fanout", "latency", "connect",
                                                        "cluster-fanout", "cluster-latency")
               and r.get("client_cpu") is not None]
    busiest = max(ws_rows, key=lambda r: r["client_cpu"], default=None)
    if busiest is not None:
        lines += [
            "",
            f"The C client at its busiest: **{_pct(busiest['client_cpu'])}** of its core "
            f"({busiest['scenario']} N={busiest['n']} against {busiest['server']}: "
            f"{_f(busiest.get('delivered_per_s') or busiest.get('handshakes_per_s'))} "
            f"{'handshakes' if busiest['scenario'] == 'connect' else 'msgs'}/s, server CPU "
            f"{_pct(busiest.get('server_cpu'))}); no row is client-bound unless flagged.",
        ]
    lines += [
        "",
        f"RSS per open idle event (no target): **{_f(per_event, 2)} KiB** (vpiska's idle RSS "
        f"with {MAP_SIDE * MAP_SIDE:,} open events minus that with 1, ÷ "
        f"{MAP_SIDE * MAP_SIDE - 1:,}).",
        "",
        "CPU columns: CPU seconds ÷ wall seconds of the server and of the client during "
        "the measurement window (100 % = one core). A row whose client reached 90 % is flagged "
        "*client saturated*: its figure is a lower bound of the server's. A row during which "
        f"other processes used {MACHINE_BUSY:.0%} of a core or more is flagged *machine busy*.",
        "",
        "## 1. Fan-out",
        "",
        f"N members in one room, {SENDERS} of them sending round-robin as fast as the server "
        "absorbs them with a bounded window of lines in flight; figure: chatMessage frames "
        "received per second summed over all N members. Client: the C load generator.",
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
    vpiska_get = _get(summary, "http", "vpiska", "requests_per_s", endpoint="events/get")[0]
    lines += [
        "",
        "## 4. HTTP",
        "",
        f"wrk, 1 thread, {HTTP_CONNECTIONS} keep-alive connections, {plan['http_seconds']:g} s "
        "per endpoint, the same Lua script for every server. vpiska's store holds 10,000 open "
        "events (one per owner) on a 100 × 100 grid. `events/range` asks for a 10 × 10 window "
        "(121 events in the answer); `events/get` one event; `users/login` one user with an "
        "argon2id hash (~33 ms of CPU per login, so its p99 is queueing behind the hash). "
        f"`{ONE_EVENT}` is the same request to a store with one open event. Measured once the "
        "server is idle after its start (startup s: from listening until its CPU falls under "
        "5 %, i.e. every event's actor started); idle RSS is read then.",
        "",
        "| server | endpoint | requests/s | p50 ms | p99 ms | answer bytes | idle RSS MiB "
        "| startup s | server CPU | client CPU | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(summary, "http"):
        if r["server"] != "vpiska":
            continue
        rss = r.get("rss_idle")
        lines.append(f"| vpiska | `{r['endpoint']}` | {_f(r.get('requests_per_s'))} | "
                     f"{_f(r.get('p50_ms'), 2)} | {_f(r.get('p99_ms'), 2)} | "
                     f"{_f(r.get('answer_bytes'))} | {_f(rss / 2**20 if rss else None, 1)} | "
                     f"{_f(r.get('startup_s'), 1)} | {_pct(r.get('server_cpu'))} | "
                     f"{_pct(r.get('client_cpu'))} | {'; '.join(r['notes'])} |")
    lines += [
        "",
        "The references answer `POST /api/v1/events/get` with vpiska's own answer for the same "
        "event, parsing the body and encoding the envelope per request (`bench/peers/http_*`): "
        "a raw ASGI app on stock hypercorn's trio worker (`hypercorn-raw`), the same app after "
        "`vpiska.transport.install(enabled=True)` (`hypercorn-raw+adapter`), "
        "Starlette on uvicorn (uvloop, httptools), and Go's net/http with GOMAXPROCS=1. Each "
        "pinned to core 0 like vpiska.",
        "",
        "| server | requests/s | p50 ms | p99 ms | server CPU | client CPU "
        "| vpiska `events/get` ÷ this | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(summary, "http"):
        if r["server"] not in HTTP_PEERS:
            continue
        lines.append(f"| {r['server']} | {_f(r.get('requests_per_s'))} | "
                     f"{_f(r.get('p50_ms'), 2)} | {_f(r.get('p99_ms'), 2)} | "
                     f"{_pct(r.get('server_cpu'))} | {_pct(r.get('client_cpu'))} | "
                     f"{_ratio(vpiska_get, r.get('requests_per_s'))} | "
                     f"{'; '.join(r['notes'])} |")
    lines += _media_markdown(summary)
    lines += _cluster_markdown(summary, plan, rows)
    lines += storm_report.markdown(summary, rows)
    lines += ["", "![delivered msgs/s and p99 latency against N](bench/results.png)"]
    lines += soak_markdown(load_soak())
    return lines


def _media_markdown(summary: list[Row]) -> list[str]:
    files = _get(summary, "media", "files", "requests_per_s")[0]
    lines = [
        "",
        "### Media downloads: bytes in files or in GridFS",
        "",
        f"`GET /api/v1/media/{{id}}` of one 1 MiB photo, wrk as above ({HTTP_CONNECTIONS} "
        "connections). `files`: the sqlite store, bytes under DATA_DIR. `gridfs`: records and "
        "bytes on the bench's MongoDB (SecantusDB, unpinned, not mongod), as nodes on separate "
        "machines run. No target: the ratio says what serving bytes from the shared store costs "
        "here, not what it costs on mongod.",
        "",
        "| media store | requests/s | ÷ files | MiB/s | p50 ms | p99 ms | server CPU "
        "| MongoDB CPU | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(summary, "media"):
        rate = r.get("requests_per_s")
        lines.append(f"| {r['server']} | {_f(rate)} | {_ratio(rate, files)} | "
                     f"{_f(rate * r['answer_bytes'] / 2**20 if rate else None)} | "
                     f"{_f(r.get('p50_ms'), 2)} | {_f(r.get('p99_ms'), 2)} | "
                     f"{_pct(r.get('server_cpu'))} | {_pct(r.get('mongodb_cpu'))} | "
                     f"{'; '.join(r['notes'])} |")
    return lines


def _cluster_markdown(summary: list[Row], plan: Row, rows: list[Row]) -> list[str]:
    ttl = next((r.get("lease_ttl_s") for r in summary if r.get("lease_ttl_s")), None)
    lines = [
        "",
        "## 5. Cluster",
        "",
        "A Redis of the bench's own (no persistence) and `python -m vpiska` nodes with "
        f"REDIS_URL sharing one sqlite store (one DATA_DIR); LEASE_TTL_SECONDS {_f(ttl, 1)} "
        "(vpiska's default). Two nodes run on two ports, pinned to cores 0 and 1, the load "
        "split evenly over them by the clients (not WORKERS=2 on one port, whose SO_REUSEPORT "
        "hash spreads 50 connections unevenly); one node is pinned to core 0. Each measurement "
        "starts a fresh cluster.",
        "",
        "### HTTP: 1 node against 2",
        "",
        "The store holds the 121 open events of events/range's window (the same answer as "
        "section 4): a node started on the 10,000-event map never settles (its leases change "
        "hands for as long as it runs; bench/README.md). Measured once every event has an "
        "owner and none changed hands for 2 s (`settle`). One wrk of 50 connections pinned to "
        "core 1 for one node; two wrks of 25, one per node, unpinned, for two. `events/get` "
        "asks for one event: requests reaching the node that does not own it are answered "
        "through Redis by its owner, which serves its own half of the load too. "
        f"`{SPREAD}` asks for each of the store's events in turn: each node owns about half "
        "of them and asks the other for the rest. The rows marked MongoDB run the nodes as "
        "separate machines would: a DATA_DIR of each node's own, a database on the bench's "
        "MongoDB (SecantusDB, unpinned; its CPU is in the notes' machine figure) all they share. "
        "Each window follows a discarded warm-up of "
        f"{_f(plan.get('cluster_warmup_seconds'), 0)} s on the same connections' endpoint. "
        f"{plan.get('cluster_http_repetitions', 3)} repetitions; "
        "`÷ 1 node` is the median over them of two nodes' figure ÷ one node's in the "
        "same repetition (measured one after the other), not a ratio of the medians shown.",
        "",
        "| nodes | endpoint | requests/s | ÷ 1 node | p50 ms | p99 ms | nodes CPU | wrk CPU "
        "| Redis CPU | settle s | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(summary, "cluster-http"):
        per_node = r.get("per_node", 1.0 if r["server"].startswith("1 node") else None)
        lines.append(f"| {r['server']} | `{r['endpoint']}` | {_f(r.get('requests_per_s'))} | "
                     f"{_ratio(per_node, 1.0)} | {_f(r.get('p50_ms'), 2)} | "
                     f"{_f(r.get('p99_ms'), 2)} | {_pct(r.get('server_cpu'))} | "
                     f"{_pct(r.get('client_cpu'))} | {_pct(r.get('redis_cpu'))} | "
                     f"{_f(r.get('settle_s'), 1)} | {'; '.join(r['notes'])} |")
    lines += [
        "",
        f"### One room of {plan.get('cluster_n', 1000):,} members: all on one node, or split "
        "over two",
        "",
        "Fan-out as in section 1; latency as in section 2 at 50 % of the lowest fan-out any "
        "repetition of either setup reached (two nodes' fan-out depends on the core their "
        "event's owner lands on). With two nodes the client alternates members between the "
        "nodes' ports (the senders too) and shares core 1 with the second node; members on "
        "the node that does not own the event get its frames through Redis.",
        "",
        "| test | nodes | delivered msgs/s | lines/s | p50 ms | p99 ms | nodes CPU | client CPU "
        "| Redis CPU | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in ("cluster-fanout", "cluster-latency"):
        for r in _rows(summary, scenario):
            lines.append(
                f"| {scenario.removeprefix('cluster-')} | {r['server']} | "
                f"{_f(r.get('delivered_per_s'))} | "
                f"{_f(r.get('rate_msgs_per_s') or r.get('sent_per_s'), 1)} | "
                f"{_f(r.get('p50_ms'), 2)} | {_f(r.get('p99_ms'), 2)} | "
                f"{_pct(r.get('server_cpu'))} | {_pct(r.get('client_cpu'))} | "
                f"{_pct(r.get('redis_cpu'))} | {'; '.join(r['notes'])} |")
    failover = find(summary, "failover", "2 nodes")
    lines += [
        "",
        "### Failover",
        "",
        "Two nodes; 100 members on the node that does not own the event, 10 of them sending "
        "50 lines/s in all; the owner is SIGKILLed 2 s into the window. Figure: time from the "
        "kill to the first delivery of a line sent after it (CLOCK_MONOTONIC on both sides).",
        "",
        "| run | failover s | lease TTL s | lines sent after the kill that arrived | "
        "delayed across the kill | lines never delivered (sent at, ms from the kill) "
        "| sockets dropped | new owner is the survivor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r.get("rep", 0)):
        if r.get("scenario") != "failover":
            continue
        if "error" in r:
            lines.append(f"| {r['rep']} | failed: {r['error'][:100]} | | | | | | |")
            continue
        lines.append(f"| {r['rep']} | {_f(r.get('failover_s'), 2)} | "
                     f"{_f(r.get('lease_ttl_s'), 1)} | {r.get('lines_received_after_kill')} of "
                     f"~{r.get('lines_sent_after_kill_about')} | {r.get('late_deliveries')} | "
                     f"{', '.join(f'{t:+.1f}' for t in r.get('missing_sent_at_ms', [])) or '–'}"
                     f" | {r.get('disconnected')} | {r.get('new_owner_is_gateway')} |")
    if failover:
        lines += ["", f"Median: **{_f(failover.get('failover_s'), 2)} s**; "
                      + ("; ".join(failover["notes"]) or "no notes") + "."]
    return lines


SOAK_FILE = BENCH / "soak.json"
SOAK_BEGIN, SOAK_END = "<!-- soak:begin -->", "<!-- soak:end -->"


def load_soak() -> Row | None:
    return json.loads(SOAK_FILE.read_text()) if SOAK_FILE.exists() else None


def soak_markdown(soak: Row | None) -> list[str]:
    """The soak section (`make soak`, bench/soak.py), between markers so soak.py can replace
    it alone."""
    lines = ["", SOAK_BEGIN, "", "## 6. Soak (`make soak`)", ""]
    if soak is None:
        return [*lines, "Not run yet: `make soak` writes this section.", "", SOAK_END]
    end, joined = soak.get("end", {}), soak.get("joined", {})
    samples = soak.get("samples", [])
    rss = [s["server_rss"] for s in samples]  # the first sample ends the first minute
    flat = rss[-1] / rss[0] if len(rss) > 1 else None
    lines += [
        f"Run {soak['started']} – {soak['ended']}: {soak['members']:,} members in "
        f"{soak['rooms']} rooms of one vpiska (core 0), the C client on core 1, "
        f"{soak['rate']:g} chat lines/s in all (round-robin over the rooms), "
        f"{soak['minutes']:g} min, sampled every {soak['sample_s']:g} s. Joined: "
        f"{joined.get('members', '–')} ({_f(joined.get('handshakes_per_s'))} handshakes/s), "
        f"every member in its room: {joined.get('settled')}.",
        "",
        "| minute | server RSS MiB | server open fds | client's open sockets | dropped "
        "| lines sent | deliveries | server CPU | client CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in samples:
        lines.append(f"| {s['t'] / 60:.1f} | {s['server_rss'] / 2**20:.1f} | "
                     f"{s['server_fds']:,} | {s['client_open']:,} | {s['dropped']} | "
                     f"{s['sent']:,} | {s['received']:,} | {_pct(s['server_cpu'])} | "
                     f"{_pct(s['client_cpu'])} |")
    verdicts = [
        f"RSS after warm-up (the first minute): last sample ÷ first = {_f(flat, 3)} "
        "(target ≤ 1.05: " + ("no result: fewer than two samples" if flat is None else
                              "met" if flat <= 1.05 else "**not met**") + ")",
        f"members that missed a line: {end.get('members_missing_lines', '–')} "
        f"({end.get('lines_missed', '–')} deliveries missing)",
        f"sockets dropped that were reading: {end.get('dropped_reading', '–')}",
    ]
    lines += ["", *(f"- {v}" for v in verdicts), "", SOAK_END]
    return lines
