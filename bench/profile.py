"""`python -m bench.profile events-get|handshakes|latency [seconds]`: where vpiska's core goes.

vpiska runs as in `make bench` (pinned to core 0); py-spy samples it (`py-spy record`, raw
collapsed stacks, 200 Hz, idle frames left out) while the load runs on core 1:
- `events-get`: wrk, 50 connections, `POST /api/v1/events/get` on the 10,000-event store;
- `handshakes`: the C client opening 5,000 WebSockets into one room, 50 in flight, again and
  again for the whole window;
- `latency`: the C client's paced chat into one room of 100 members, at the rate of the
  latency row at N=100 (LATENCY_RATE lines/s: each line arrives alone, its own store write).
The stacks go to bench/.cache/profile-<what>.txt (for flamegraph.pl or speedscope); the
functions with the most samples, by own time and by total time, are printed.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

from bench import client, httpload
from bench.scenarios import SENDERS
from bench.seed import make_seeds
from bench.servers import BENCH, running, wait_idle

PY_SPY = Path(sys.executable).parent / "py-spy"
LATENCY_RATE = 342.0  # lines/s: 50 % of the slowest server's maximum at N=100 in make bench


def profile(what: str, seconds: float) -> Path:
    seeds = make_seeds(BENCH / ".cache")
    client.use_members(seeds.member_ids)
    out = BENCH / ".cache" / f"profile-{what}.txt"
    store = seeds.map_db if what == "events-get" else seeds.room_db
    with running("vpiska", store) as server:
        wait_idle(server.pid)  # every actor started: the profile is of serving
        spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(server.pid), "--rate", "200",
                                "--duration", f"{seconds:g}", "--format", "raw", "--output",
                                str(out), "--nonblocking"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # py-spy attached
        deadline = time.monotonic() + seconds
        if what == "events-get":
            endpoint = httpload.endpoints(seeds.map_event_id)[1]
            httpload.wrk(server, endpoint, seconds, 50)
        elif what == "latency":
            client.run("latency", [server.port], [seeds.room_event_id], [server.pid],
                       {"n": 100, "in_flight": 50, "connect_budget": 12.0, "settle_budget": 8.0,
                        "warmup": 0.5, "seconds": seconds, "idle": 0.1, "senders": SENDERS,
                        "rate": LATENCY_RATE}, seconds + 60)
        else:
            while time.monotonic() < deadline:
                client.run("connect", [server.port], [seeds.room_event_id], [server.pid],
                           {"n": 5000, "in_flight": 50, "idle": 0.1,
                            "connect_budget": max(1.0, deadline - time.monotonic())},
                           seconds + 60)
        _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err[-1000:]}")
    return out


def summary(stacks: Path, top: int = 25) -> str:
    """Own time by function, own time by package, and total time by vpiska function (py-spy
    samples a trio task's stack apart from the run loop's, so "total" is within a task)."""
    own: collections.Counter[str] = collections.Counter()
    package: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in stacks.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[_short(frames[-1])] += count
        package[_package(frames[-1])] += count
        for frame in {_short(f) for f in frames if "vpiska/" in f}:
            total[frame] += count
    lines = [f"{samples} samples", "", "own time by package:"]
    lines += [f"  {100 * n / samples:5.1f} %  {f}" for f, n in package.most_common(12)]
    lines += ["", "own time by function:"]
    lines += [f"  {100 * n / samples:5.1f} %  {f}" for f, n in own.most_common(top)]
    lines += ["", "vpiska's functions, with what they call:"]
    lines += [f"  {100 * n / samples:5.1f} %  {f}" for f, n in total.most_common(15)]
    return "\n".join(lines)


def _package(frame: str) -> str:
    where = frame.partition(" (")[2]
    parts = Path(where.rstrip(")").rsplit(":", 1)[0]).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if parts and parts[0] == "vpiska":
        return "vpiska"
    return parts[0] if len(parts) > 1 else "stdlib"


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    return f"{name} ({'/'.join(parts[-2:])})"


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "events-get"
    if kind not in ("events-get", "handshakes", "latency"):
        raise SystemExit("usage: python -m bench.profile events-get|handshakes|latency [seconds]")
    window = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    print(summary(profile(kind, window)))
