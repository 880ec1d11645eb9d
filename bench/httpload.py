"""HTTP scenario: wrk against three vpiska endpoints, and events/get of the HTTP references.

wrk (Debian's package) is a C load generator, so one client core is far from the limit of a
Python server; one thread, a fixed number of keep-alive connections, closed loop. Its Lua script
(wrk_post.lua) sends the POST body and counts answers that are not `"isSuccess":true`, since
vpiska answers errors with HTTP 200. Client CPU comes from wrk's own rusage (os.wait4).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import psutil

from bench.seed import LOGIN_PASSWORD, LOGIN_PHONE, MAP_SIDE
from bench.servers import BENCH, CLIENT_CORE, EVENT_ANSWER, Running

VIEWPORT = 10  # events/range asks for a 10 × 10 window of the 100 × 100 map: 11² = 121 events
ONE_EVENT = "events/get (1 open event)"  # the same request, on a store with one open event
SPREAD = "events/get (121 events)"  # the cluster section: each of its store's events in turn


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    body: dict[str, Any]
    bodies: tuple[dict[str, Any], ...] = ()  # when given, the requests go through them
    method: str = "POST"  # or "GET": no body, any 200 answer is a success


def spread(endpoint: Endpoint, name: str, field: str, values: list[str]) -> Endpoint:
    """`endpoint` asked for each of `values` in turn (as `field`) instead of one."""
    return Endpoint(name, endpoint.path, endpoint.body,
                    tuple(endpoint.body | {field: value} for value in values))


def endpoints(event_id: str) -> list[Endpoint]:
    centre = {"x": MAP_SIDE // 2, "y": MAP_SIDE // 2}
    return [
        Endpoint("events/range", "/api/v1/events/range",
                 {"coordinates": centre, "horizontalRange": VIEWPORT, "verticalRange": VIEWPORT}),
        Endpoint("events/get", "/api/v1/events/get", {"eventId": event_id}),
        Endpoint("users/login", "/api/v1/users/login",
                 {"phone": LOGIN_PHONE, "password": LOGIN_PASSWORD}),
    ]


def ask(port: int, endpoint: Endpoint) -> bytes:
    """One request before the load: it must succeed. Returns its answer."""
    if endpoint.method == "GET":
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{endpoint.path}",
                                    timeout=30) as answer:
            got: bytes = answer.read()
        return got
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{endpoint.path}", json.dumps(endpoint.body).encode(),
        {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        raw: bytes = answer.read()
    if not json.loads(raw).get("isSuccess"):
        raise RuntimeError(f"{endpoint.name} failed before the load: {raw[:300]!r}")
    return raw


def save_answer(server: Running, endpoint: Endpoint) -> None:
    """Keep vpiska's events/get answer: the HTTP peers answer with exactly it."""
    EVENT_ANSWER.parent.mkdir(parents=True, exist_ok=True)
    EVENT_ANSWER.write_bytes(ask(server.port, endpoint))


def has_answer(event_id: str) -> bool:
    if not EVENT_ANSWER.exists():
        return False
    return bool(json.loads(EVENT_ANSWER.read_bytes())["result"]["id"] == event_id)


def wrk(server: Running, endpoint: Endpoint, seconds: float, connections: int) -> dict[str, Any]:
    """One wrk pinned to the client core against one server."""
    return wrk_split([server.port], endpoint, seconds, connections, [server.pid], CLIENT_CORE)


def wrk_split(ports: list[int], endpoint: Endpoint, seconds: float, connections: int,
              server_pids: list[int], core: str | None,
              others: dict[str, int] | None = None) -> dict[str, Any]:
    """wrk against every port at once, `connections` split evenly over them (one wrk process
    per port, pinned to `core`, or left to the scheduler when None). Requests/s are summed;
    p50 is the median of the wrks', p99 and max the worst; server CPU is summed over
    `server_pids`; `others` (name: pid, e.g. Redis) get a CPU column of their own."""
    answer_bytes = len(ask(ports[0], endpoint))
    for port in ports[1:]:
        ask(port, endpoint)
    servers = [psutil.Process(pid) for pid in server_pids]
    extra = {name: psutil.Process(pid) for name, pid in (others or {}).items()}
    env = dict(os.environ, WRK_BODY=json.dumps(endpoint.body),
               WRK_BODIES="\n".join(json.dumps(body) for body in endpoint.bodies),
               WRK_GET="1" if endpoint.method == "GET" else "0")
    each = max(1, connections // len(ports))
    pin = ["taskset", "-c", core] if core is not None else []

    def cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in ports]
        before = [cpu(p) for p in servers]
        extra_before = {name: cpu(p) for name, p in extra.items()}
        machine_before = psutil.cpu_times()
        start = time.perf_counter()
        procs = [subprocess.Popen(
            [*pin, "wrk", "-t1", f"-c{each}", f"-d{seconds:g}s", "--timeout", "10s",
             "-s", str(BENCH / "wrk_post.lua"), f"http://127.0.0.1:{port}{endpoint.path}"],
            env=env, stdout=out, stderr=subprocess.STDOUT) for port, out in zip(ports, outs,
                                                                                 strict=True)]
        client_cpu = 0.0
        codes = []
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            codes.append(proc.returncode)
            client_cpu += usage.ru_utime + usage.ru_stime
        wall = time.perf_counter() - start
        server_cpu = sum(cpu(p) for p in servers) - sum(before)
        extra_cpu = {name: (cpu(p) - extra_before[name]) / wall for name, p in extra.items()}
        machine_after = psutil.cpu_times()
        texts = []
        for out in outs:
            out.seek(0)
            texts.append(out.read())
    raws = []
    for code, text in zip(codes, texts, strict=True):
        line = next((ln for ln in text.splitlines() if ln.startswith("WRK_JSON ")), None)
        if code != 0 or line is None:
            raise RuntimeError(f"wrk failed ({code}):\n{text[-2000:]}")
        raws.append(json.loads(line.removeprefix("WRK_JSON ")))
    machine_cpu = sum(getattr(machine_after, k) - getattr(machine_before, k)
                      for k in ("user", "nice", "system"))
    others_cpu = sum(extra_cpu.values()) * wall
    return {
        "requests_per_s": sum(raw["requests"] / (raw["duration_us"] / 1e6) for raw in raws),
        "p50_ms": statistics.median(raw["p50_us"] for raw in raws) / 1000,
        "p99_ms": max(raw["p99_us"] for raw in raws) / 1000,
        "max_ms": max(raw["max_us"] for raw in raws) / 1000,
        "requests": sum(raw["requests"] for raw in raws),
        "failed": sum(raw["failed"] for raw in raws),
        "socket_errors": sum(raw["socket_errors"] for raw in raws),
        "answer_bytes": answer_bytes, "seconds": wall, "connections": each * len(ports),
        "server_cpu": server_cpu / wall, "client_cpu": client_cpu / wall,
        **{f"{name}_cpu": value for name, value in extra_cpu.items()},
        "other_cpu": max(0.0, machine_cpu - server_cpu - client_cpu - others_cpu) / wall,
    }
