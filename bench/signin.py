"""Sign-in abuse under load: what a storm of wrong logins costs the users who log in meanwhile.

A `python -m vpiska` of its own (default limits, sqlite, TRUSTED_PROXIES=127.0.0.1), then for
STORM seconds:

- the attack: wrk (C, one thread, 200 keep-alive connections, closed loop: each wrong login
  is resent as soon as it is answered) through 127.0.0.1 as a trusted proxy, the attempts
  spread evenly over 20 client addresses (X-Forwarded-For 10.66.0.1-20) and 200 victims'
  phones (`--victims`): the per-address rate is what stops them (the per-phone rule would stop
  a storm at one phone sooner);
- 20 users from addresses of their own (sockets bound to 127.0.2.1-20, not trusted, counted
  by their peer address), each logging in with the right password every 2 s (within the
  rate), timed from the first byte sent to the last byte of the answer, over a keep-alive
  connection of raw HTTP/1.1 (no client library between the clock and the server).

The load generator must be faster than what it measures: wrk and the users' client run on
CLIENT core, the server on the SERVER core (`taskset`; `--server-cores 0,1` lets it have
both), with one hash slot per core it has (PASSWORD_HASH_CONCURRENCY, unless `--set`). wrk's
own CPU time is reported: near 100 % of its core, it is what is measured. On a shared machine,
`--nice -10` (root) gives the bench's processes the cores before other sessions' work.

Figures: the users' login latency (p50, p99, max) against the CPU time of one argon2
verification measured here first, on the server's cores (the issue-20 target: p99 ≤ one hash
+ 100 ms); the attempts answered, refused and verified (`vpiska_password_hashes_total`,
/metrics); the server's CPU time (/proc) and what is left of it per attacker attempt once the
verifications' hashes are taken out, and the part its threads at niceness 19 took (the
suspected guessers' hashes, vpiska/low_priority_threads.py); the load average before and
after (the machine may be shared: a busy one shows in the hash's wall time against its CPU
time).

The deterministic half (no hash for a refused attempt, exact counts) is a test:
tests/test_signin_limits.py::test_a_storm_of_wrong_logins_spends_no_hash_on_refused_attempts.

    .venv/bin/python -m bench.signin [--storm SECONDS] [--connections N] [--set VAR=VALUE]
                                     [--server-cores LIST] [--client-core N]
                                     [--server-source DIR] [--nice N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from vpiska.auth import Passwords
from vpiska.config import Config
from vpiska.domain import User, new_id
from vpiska.low_priority_threads import NICENESS
from vpiska.store.sqlite import SqliteStore

PASSWORD = "secret1"
ATTACKERS = [f"10.66.0.{n}" for n in range(1, 21)]
USERS = [f"127.0.2.{n}" for n in range(1, 21)]
VICTIMS = 200
USER_PHONES = [f"90020{n:05d}" for n in range(len(USERS))]
# 30 logins a minute each (the default rate): 10 hashes a second, a sixth of what a core
# hashes, so the users alone never queue.
USER_PAUSE_SECONDS = 2.0
TARGET_MARGIN_SECONDS = 0.100
WRK_SCRIPT = Path(__file__).with_name("wrk_signin.lua")


def free_port() -> int:
    # bench/servers.py has one, but imports what only bench/.venv installs: this bench runs
    # from the project's own .venv too.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def victims(count: int) -> list[str]:
    return [f"90010{n:05d}" for n in range(count)]


async def seed(path: str, victim_count: int) -> None:
    store = await SqliteStore.open(path)
    try:
        hashed = await Passwords(Config()).hash(PASSWORD)
        for phone in victims(victim_count) + USER_PHONES:
            await store.add_user(User(id=new_id(), name=f"n{phone}", phone=phone,
                                      password_hash=hashed))
    finally:
        await store.aclose()


async def one_hash_seconds() -> tuple[float, float]:
    """20 argon2 verifications, one at a time, in this process: the CPU time of one (what a
    hash costs, whatever else the machine runs) and the median wall time."""
    passwords = Passwords(Config())
    hashed = await passwords.hash(PASSWORD)
    times = []
    cpu = time.process_time()
    for _ in range(20):
        started = time.perf_counter()
        await passwords.verify(PASSWORD, hashed)
        times.append(time.perf_counter() - started)
    return (time.process_time() - cpu) / 20, statistics.median(times)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def low_priority_cpu_seconds(pid: int) -> float:
    """CPU time of the process's threads at niceness 19 (vpiska/low_priority_threads.py: the
    suspected guessers' hashes), those alive now."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        if int(fields[16]) == NICENESS:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def counter(page: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", page, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


class Connection:
    """One keep-alive HTTP/1.1 connection from `address`, a request at a time."""

    def __init__(self, port: int, address: str) -> None:
        self._port = port
        self._address = address
        self._stream: trio.SocketStream | None = None
        self._buffer = b""

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self._port}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                   ).encode() + data
        if self._stream is None:
            await self._connect()
        assert self._stream is not None
        try:
            await self._stream.send_all(request)
            answer: dict[str, Any] = json.loads(await self._answer())
        except (trio.BrokenResourceError, ConnectionError, EOFError):
            # The server closed the idle connection as the request went: once more.
            await self.aclose()
            await self._connect()
            assert self._stream is not None
            await self._stream.send_all(request)
            answer = json.loads(await self._answer())
        return answer

    async def _connect(self) -> None:
        sock = trio.socket.socket()
        await sock.bind((self._address, 0))
        await sock.connect(("127.0.0.1", self._port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._stream = trio.SocketStream(sock)
        self._buffer = b""

    async def _answer(self) -> bytes:
        assert self._stream is not None
        while b"\r\n\r\n" not in self._buffer:
            await self._more()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(self._buffer) < length:
            await self._more()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body

    async def _more(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            raise EOFError
        self._buffer += chunk

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None


async def users_logging_in(port: int, storming: trio.Event, stop: trio.Event,
                           latencies: list[float], answers: Counter[str]) -> None:
    """Each user connects and logs in once before the storm, then every USER_PAUSE_SECONDS
    (spread over the pause) until `stop`."""
    async def user(n: int, address: str, phone: str) -> None:
        connection = Connection(port, address)
        try:
            await connection.post("/api/v1/users/login", {"phone": phone, "password": PASSWORD})
            await storming.wait()
            await trio.sleep(USER_PAUSE_SECONDS * n / len(USERS))
            while not stop.is_set():
                started = time.perf_counter()
                answer = await connection.post("/api/v1/users/login",
                                               {"phone": phone, "password": PASSWORD})
                latencies.append(time.perf_counter() - started)
                answers.update(["user logged in"] if answer["isSuccess"]
                               else [e["errorCode"] for e in answer["errors"]])
                pause = USER_PAUSE_SECONDS - (time.perf_counter() - started)
                with trio.move_on_after(max(0.0, pause)):
                    await stop.wait()
        finally:
            await connection.aclose()

    async with trio.open_nursery() as nursery:
        for n, (address, phone) in enumerate(zip(USERS, USER_PHONES, strict=True)):
            nursery.start_soon(user, n, address, phone)


async def attack(port: int, seconds: float, connections: int, phones: list[str],
                 pinned: list[str]) -> dict[str, Any]:
    """wrk's summary, and its CPU seconds."""
    env = {**os.environ, "WRK_PHONES": " ".join(phones), "WRK_ADDRESSES": " ".join(ATTACKERS)}
    command = [*pinned, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
               "--timeout", "10s", "-s", str(WRK_SCRIPT),
               f"http://127.0.0.1:{port}/api/v1/users/login"]

    def run() -> tuple[int, str, Any]:
        with tempfile.TemporaryFile("w+") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)
            out.seek(0)
            return os.waitstatus_to_exitcode(status), out.read(), usage

    code, text, usage = await trio.to_thread.run_sync(run)
    line = next((ln for ln in text.splitlines() if ln.startswith("WRK_JSON ")), None)
    if code != 0 or line is None:
        raise RuntimeError(f"wrk failed ({code}):\n{text[-2000:]}")
    return {**json.loads(line.removeprefix("WRK_JSON ")),
            "cpu_seconds": usage.ru_utime + usage.ru_stime}


def prefer(nice: int) -> None:
    """This process and its children before the machine's other work, by `nice`. With
    autogroups (Linux's default) the scheduler shares a core between sessions first, then
    between a session's processes by niceness: the bench takes a session of its own and
    nices it too."""
    if os.getsid(0) != os.getpid():
        os.setsid()
    Path("/proc/self/autogroup").write_text(str(nice))
    os.setpriority(os.PRIO_PROCESS, 0, nice)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def main(seconds: float, connections: int, victim_count: int, settings: dict[str, str],
               server_cores: str, client_core: str, server_source: str, nice: int) -> None:
    niced = ["nice", "-n", str(nice)] if nice else []
    os.sched_setaffinity(0, {int(core) for core in server_cores.split(",")})
    hash_seconds, hash_wall = await one_hash_seconds()
    os.sched_setaffinity(0, {int(client_core)})
    with tempfile.TemporaryDirectory() as data:
        await seed(str(Path(data) / "vpiska.db"), victim_count)
        port = free_port()
        env = {**os.environ, "DATA_DIR": data, "SERVER_PORT": str(port),
               "SERVER_HOST": "127.0.0.1", "LOG_LEVEL": "WARNING",
               "TRUSTED_PROXIES": "127.0.0.1"}
        for variable in ("SIGNIN_RATE_PER_MINUTE", "SIGNIN_REFUSAL_PAUSE_MS",
                         "PASSWORD_HASH_CONCURRENCY", "REDIS_URL", "WORKERS"):
            env.pop(variable, None)
        # One hash slot per core the server has: two hashes sharing a core each take twice
        # as long (and more CPU: their 12 MiB each thrash the cache).
        env["PASSWORD_HASH_CONCURRENCY"] = str(len(server_cores.split(",")))
        env.update(settings)
        server = await trio.lowlevel.open_process(
            [*niced, "taskset", "-c", server_cores, sys.executable, "-m", "vpiska"], env=env,
            stdout=subprocess.DEVNULL, cwd=server_source)
        probe = Connection(port, "127.0.0.1")
        try:
            with trio.fail_after(30):
                while True:
                    try:
                        await probe.post("/api/v1/users/login", {})
                        break
                    except OSError:
                        await trio.sleep(0.1)
            before_page = await scrape(port)
            load_before = os.getloadavg()
            cpu_before = cpu_seconds(server.pid)
            low_before = low_priority_cpu_seconds(server.pid)
            latencies: list[float] = []
            answers: Counter[str] = Counter()
            storming, stop = trio.Event(), trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(users_logging_in, port, storming, stop, latencies, answers)
                await trio.sleep(1)  # the users connected and logged in once
                storming.set()
                wrk = await attack(port, seconds, connections, victims(victim_count),
                                   [*niced, "taskset", "-c", client_core])
                stop.set()
            cpu = cpu_seconds(server.pid) - cpu_before
            low_cpu = low_priority_cpu_seconds(server.pid) - low_before
            load_after = os.getloadavg()
            after_page = await scrape(port)
        finally:
            await probe.aclose()
            server.terminate()
            await server.wait()

    def delta(sample: str) -> float:
        return counter(after_page, sample) - counter(before_page, sample)

    verified = delta('vpiska_password_hashes_total{work="verify"}')
    refused = wrk["refused"]
    wall = wrk["duration_us"] / 1e6
    p99 = percentile(latencies, 0.99)
    print(f"server: {server_source}, settings {settings or 'its defaults'}, "
          f"PASSWORD_HASH_CONCURRENCY {env['PASSWORD_HASH_CONCURRENCY']}")
    print(f"one argon2 verification (20, core(s) {server_cores}): {hash_seconds * 1000:.1f} ms "
          f"of CPU, median wall time {hash_wall * 1000:.1f} ms")
    print(f"storm: {wall:.1f} s, wrk with {connections} connections (core {client_core}, "
          f"CPU {wrk['cpu_seconds'] / wall:.0%} of it) from {len(ATTACKERS)} addresses at "
          f"{victim_count} phones; "
          f"{len(USERS)} users logging in every {USER_PAUSE_SECONDS:.0f} s; "
          f"server on core(s) {server_cores}")
    print(f"attacker attempts: {wrk['requests']} ({wrk['requests'] / wall:.0f}/s), "
          f"refused {refused}, InvalidPassword {wrk['invalid']}, other {wrk['other']}, "
          f"socket errors {wrk['socket_errors']}; their latency p50 "
          f"{wrk['p50_us'] / 1000:.1f} ms, p99 {wrk['p99_us'] / 1000:.1f} ms")
    print(f"users' answers: {dict(answers)}")
    print(f"argon2 verifications by the server: {verified:.0f} "
          f"(users' {answers['user logged in']}, wrong passwords {wrk['invalid']})")
    outside = cpu - verified * hash_seconds
    print(f"server CPU: {cpu:.2f} s over {wall:.1f} s; without the verifications' hashes "
          f"{outside:.2f} s, {outside / max(1, wrk['requests']) * 1e6:.0f} µs per attacker "
          f"attempt; at niceness 19 (suspected guessers' hashes) {low_cpu:.2f} s")
    print(f"load average: before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"niceness {nice}")
    print(f"users' logins: n={len(latencies)} p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    target = hash_seconds + TARGET_MARGIN_SECONDS
    print(f"target p99 <= one hash + 100 ms = {target * 1000:.1f} ms: "
          f"{'met' if p99 <= target else 'NOT met'}")


async def scrape(port: int) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := await stream.receive_some():
            raw += chunk
    return raw.partition(b"\r\n\r\n")[2].decode()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storm", type=float, default=20.0, help="seconds of storm")
    parser.add_argument("--connections", type=int, default=200,
                        help="wrong logins the attack keeps in flight")
    parser.add_argument("--victims", type=int, default=VICTIMS,
                        help="phones attacked (each allows 5 wrong passwords: fewer victims, "
                             "fewer hashes before every attempt is refused)")
    parser.add_argument("--server-cores", default="0", help="taskset list for the server")
    parser.add_argument("--client-core", default="1", help="core of wrk and the users' client")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness of the bench's session (its autogroup) and of the "
                             "server, wrk and the users' client: -10 puts them before a shared "
                             "machine's other work (needs root)")
    parser.add_argument("--server-source", default=".",
                        help="folder whose vpiska/ the server runs (e.g. an older revision's "
                             "`git archive`; default: this checkout)")
    parser.add_argument("--set", action="append", default=[], metavar="VARIABLE=VALUE",
                        help="a server setting (SIGNIN_REFUSAL_PAUSE_MS=0, "
                             "PASSWORD_HASH_CONCURRENCY=1, ...); default: the server's own")
    arguments = parser.parse_args()
    if arguments.nice:
        prefer(arguments.nice)
    trio.run(main, arguments.storm, arguments.connections, arguments.victims,
             dict(setting.split("=", 1) for setting in arguments.set),
             arguments.server_cores, arguments.client_core, arguments.server_source,
             arguments.nice)
