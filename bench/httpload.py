"""HTTP scenario (vpiska only: the peers have no HTTP API): wrk against three endpoints.

wrk (Debian's package) is a C load generator, so one client core is far from the limit of a
Python server; one thread, a fixed number of keep-alive connections, closed loop. Its Lua script
(wrk_post.lua) sends the POST body and counts answers that are not `"isSuccess":true`, since
vpiska answers errors with HTTP 200. Client CPU comes from wrk's own rusage (os.wait4).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import psutil

from bench.seed import LOGIN_PASSWORD, LOGIN_PHONE, MAP_SIDE
from bench.servers import BENCH, CLIENT_CORE, Running

VIEWPORT = 10  # events/range asks for a 10 × 10 window of the 100 × 100 map: 11² = 121 events


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    body: dict[str, Any]


def endpoints(event_id: str) -> list[Endpoint]:
    centre = {"x": MAP_SIDE // 2, "y": MAP_SIDE // 2}
    return [
        Endpoint("events/range", "/api/v1/events/range",
                 {"coordinates": centre, "horizontalRange": VIEWPORT, "verticalRange": VIEWPORT}),
        Endpoint("events/get", "/api/v1/events/get", {"eventId": event_id}),
        Endpoint("users/login", "/api/v1/users/login",
                 {"phone": LOGIN_PHONE, "password": LOGIN_PASSWORD}),
    ]


def check(server: Running, endpoint: Endpoint) -> int:
    """One request before the load: it must succeed. Returns the size of its answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{endpoint.path}", json.dumps(endpoint.body).encode(),
        {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        raw = answer.read()
    if not json.loads(raw).get("isSuccess"):
        raise RuntimeError(f"{endpoint.name} failed before the load: {raw[:300]!r}")
    return len(raw)


def wrk(server: Running, endpoint: Endpoint, seconds: float, connections: int) -> dict[str, Any]:
    answer_bytes = check(server, endpoint)
    server_proc = psutil.Process(server.pid)
    cmd = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
           "--timeout", "10s", "-s", str(BENCH / "wrk_post.lua"),
           f"http://127.0.0.1:{server.port}{endpoint.path}"]
    env = dict(os.environ, WRK_BODY=json.dumps(endpoint.body))
    with tempfile.TemporaryFile("w+") as out:
        before, machine_before = server_proc.cpu_times(), psutil.cpu_times()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        after, machine_after = server_proc.cpu_times(), psutil.cpu_times()
        out.seek(0)
        text = out.read()
    line = next((ln for ln in text.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text[-2000:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    duration = raw["duration_us"] / 1e6
    server_cpu = after.user + after.system - before.user - before.system
    client_cpu = usage.ru_utime + usage.ru_stime
    machine_cpu = sum(getattr(machine_after, k) - getattr(machine_before, k)
                      for k in ("user", "nice", "system"))
    return {
        "requests_per_s": raw["requests"] / duration,
        "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000, "requests": raw["requests"], "failed": raw["failed"],
        "socket_errors": raw["socket_errors"], "answer_bytes": answer_bytes,
        "seconds": duration, "connections": connections,
        "server_cpu": server_cpu / wall, "client_cpu": client_cpu / wall,
        "other_cpu": max(0.0, machine_cpu - server_cpu - client_cpu) / wall,
    }
