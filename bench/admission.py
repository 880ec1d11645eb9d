"""A handshake storm against one node: what admission (MAX_PENDING_HANDSHAKES) makes of it.

```sh
.venv/bin/python -m bench.admission                      # 3,000 clients, bounds 64 and 0, 2 rounds
.venv/bin/python -m bench.admission --storm 3000 --bounds 64,256,0 --rounds 3
```

One node (`python -m vpiska`, pinned to core 0, on the seeded room store, its other settings
the defaults but for the bench's relaxed chat limits and pings every 600 s) has a running room:
10 members chatting, a line every 50 ms, each line timed from its send to its broadcast back
to its sender (the probe: its own process on core 1). STORM clients (one trio process, also on
core 1) then open their connections at once to another event, each a forged member. A client
answered 503 waits its Retry-After plus a random share of it that doubles with each refusal
(docs/protocol.md, "Reconnecting"); a connection that fails or is not answered within 30 s
waits a jittered back-off too and tries again. A client is in once its room's first frame has
come.

Per run: the 503s, the failed or timed-out attempts, seconds from the storm's start until the
last client was in (and the median client), and the room's p99 in the 5 s before the storm and
during it. Runs alternate the bounds (64, 0, 64, 0, …): on a shared machine only ratios of runs
made in the same sitting mean anything.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import random
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import trio

from bench import servers
from bench.seed import make_seeds
from bench.servers import CACHE, running
from bench.tokens import forge_token

PROBE_MEMBERS = 10
PROBE_INTERVAL = 0.05  # s between two lines of the running room
BEFORE = 5.0  # s of the room alone, before the storm
AFTER = 2.0  # s of the room after the last client is in
ATTEMPT_DEADLINE = 30.0  # s a client waits for an answer before it gives up and retries
PATH = "/api/v1/websockets/event"


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# A minimal client: an upgrade, masked text frames, frames read back.


async def _upgrade(port: int, token: str, event_id: str
                   ) -> tuple[trio.SocketStream, int, dict[bytes, bytes], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    try:
        await stream.send_all(
            f"GET {PATH}?accessToken={token}&eventId={event_id} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError("closed before an answer")
            data += chunk
    except BaseException:  # a client that gives up closes its connection
        await trio.aclose_forcefully(stream)
        raise
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
    return stream, int(lines[0].split(b" ", 2)[1]), headers, rest


class _Frames:
    def __init__(self, stream: trio.SocketStream, rest: bytes) -> None:
        self.stream = stream
        self.buffer = rest

    async def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    async def next_text(self) -> str:
        while True:
            first, second = await self._read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self._read(8))
            payload = await self._read(length)
            if first & 0x0F == 0x1:
                return payload.decode()

    async def send_text(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        await self.stream.send_all(struct.pack("!BB", 0x81, 0x80 | len(payload)) + b"\0\0\0\0"
                                   + payload)


# The probe: a running room, its lines timed.


async def _probe(port: int, event_id: str, tokens: list[str], out: Path) -> None:
    members = []
    for token in tokens:
        stream, status, _, rest = await _upgrade(port, token, event_id)
        assert status == 101, status
        members.append(_Frames(stream, rest))
    sent: dict[str, float] = {}
    with out.open("w") as file:
        async def read(member: _Frames) -> None:
            while True:
                text = await member.next_text()
                if text.startswith("chatMessage/"):
                    line = json.loads(text.split("/", 1)[1])["message"]
                    at = sent.get(line)  # every delivery of it, to every member
                    if at is not None:
                        file.write(f"{at:.6f} {time.time() - at:.6f}\n")
                        file.flush()

        async with trio.open_nursery() as nursery:
            for member in members:
                nursery.start_soon(read, member)
            for n in range(10**9):
                line = f"p{n}"
                sent[line] = time.time()
                await members[n % len(members)].send_text(f"chatMessage/{line}")
                await trio.sleep(PROBE_INTERVAL)  # the room's pace


# The storm.


async def _storm(port: int, event_id: str, tokens: list[str]) -> dict[str, Any]:
    refusals = 0
    failures: collections.Counter[str] = collections.Counter()
    admitted: list[float] = []
    streams: list[trio.SocketStream] = []
    start = time.monotonic()

    async def client(token: str) -> None:
        nonlocal refusals
        for attempt in range(1000):
            try:
                with trio.fail_after(ATTEMPT_DEADLINE):
                    stream, status, headers, rest = await _upgrade(port, token, event_id)
                    if status == 101:
                        try:
                            await _Frames(stream, rest).next_text()  # in the room
                        except BaseException:
                            await trio.aclose_forcefully(stream)
                            raise
                        admitted.append(time.monotonic() - start)
                        streams.append(stream)
                        return
                    await stream.aclose()
                if status != 503:
                    raise RuntimeError(f"answered {status}")
                refusals += 1
                retry_after = float(headers.get(b"retry-after", b"1"))
                jitter = random.uniform(0, retry_after * 2 ** min(attempt, 4))
                await trio.sleep(retry_after + jitter)
            except (OSError, EOFError, trio.TooSlowError, trio.BrokenResourceError) as failure:
                failures[type(failure).__name__] += 1
                await trio.sleep(random.uniform(0, min(30.0, 0.5 * 2 ** attempt)))

    async with trio.open_nursery() as nursery:
        for token in tokens:
            nursery.start_soon(client, token)
    for stream in streams:
        await stream.aclose()
    return {"clients": len(tokens), "refusals": refusals, "failures": dict(failures),
            "all_in_seconds": round(max(admitted), 3),
            "median_in_seconds": round(statistics.median(admitted), 3)}


# The driver.


def _p99(latencies: list[float]) -> float | None:
    if len(latencies) < 10:
        return None
    return round(statistics.quantiles(latencies, n=100)[98] * 1000, 1)


def _event_for_the_storm(port: int) -> str:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        owner = http.post("/api/v1/users/create", json={
            "name": "storm-host", "phone": "9999999999", "password": "secret1",
            "confirmPassword": "secret1"}).json()["result"]
        event = http.post("/api/v1/events/create", json={
            "name": "storm", "address": "street 1", "coordinates": {"x": 1, "y": 1}},
            headers={"Authorization": f"Bearer {owner['accessToken']}"}).json()["result"]
        return str(event["id"])


def _run(bound: int, storm: int, seeds: Any, tmp: Path, profile: Path | None = None
         ) -> dict[str, Any]:
    probe_tokens = [forge_token(user_id, f"m{i}")
                    for i, user_id in enumerate(seeds.member_ids[:PROBE_MEMBERS])]
    storm_tokens = [forge_token(user_id, f"m{i}") for i, user_id in
                    enumerate(seeds.member_ids[PROBE_MEMBERS:PROBE_MEMBERS + storm])]
    with running("vpiska", seeds.room_db, env={"MAX_PENDING_HANDSHAKES": str(bound),
                                               "WS_PING_SECONDS": "600"}) as server:
        storm_event = _event_for_the_storm(server.port)
        lines = tmp / f"probe-{bound}.txt"
        tokens_file = tmp / "tokens.json"
        tokens_file.write_text(json.dumps({"probe": probe_tokens, "storm": storm_tokens}))
        own = [sys.executable, "-m", "bench.admission"]
        probe = subprocess.Popen(["taskset", "-c", servers.CLIENT_CORE, *own, "probe",
                                  str(server.port), seeds.room_event_id, str(tokens_file),
                                  str(lines)])
        try:
            time.sleep(BEFORE + 1)  # the room alone: the "before" window
            spy = None if profile is None else subprocess.Popen(
                ["py-spy", "record", "--format", "raw", "--nonblocking", "-r", "200",
                 "-o", str(profile / f"storm-{bound}.txt"), "--pid", str(server.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            process = psutil.Process(server.pid)
            cpu_before = sum(process.cpu_times()[:2])
            started = time.time()
            result = json.loads(subprocess.run(
                ["taskset", "-c", servers.CLIENT_CORE, *own, "storm", str(server.port), storm_event,
                 str(tokens_file)], check=True, capture_output=True, text=True).stdout)
            ended = time.time()
            server_cpu = (sum(process.cpu_times()[:2]) - cpu_before) / (ended - started)
            if spy is not None:
                spy.send_signal(2)  # py-spy writes its profile on SIGINT
                spy.wait()
            time.sleep(AFTER)
        finally:
            probe.terminate()
            probe.wait()
    timed = [tuple(map(float, row.split())) for row in lines.read_text().splitlines()]
    before = [latency for at, latency in timed if started - BEFORE <= at < started]
    during = [latency for at, latency in timed if started <= at < ended]
    return {"max_pending_handshakes": bound, **result,
            "room_p99_ms_before": _p99(before), "room_p99_ms_during": _p99(during),
            "room_max_ms_during": round(max(during, default=0) * 1000, 1),
            "room_lines_during": len(during), "server_cpu_during": round(server_cpu, 2),
            "load_average": round(os.getloadavg()[0], 1)}


def main() -> None:
    _raise_open_files()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run", choices=("run", "probe", "storm"))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--storm", type=int, default=3000)
    parser.add_argument("--bounds", default="64,0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=Path, help="py-spy's stacks of the storm, per bound")
    parser.add_argument("--unpinned", action="store_true",
                        help="server and clients on either core (other benches pin to core 0)")
    options = parser.parse_args()
    if options.command == "probe":
        port, event_id, tokens, out = options.args
        trio.run(_probe, int(port), event_id, json.loads(Path(tokens).read_text())["probe"],
                 Path(out))
        return
    if options.command == "storm":
        port, event_id, tokens = options.args
        print(json.dumps(trio.run(_storm, int(port), event_id,
                                  json.loads(Path(tokens).read_text())["storm"])))
        return
    if options.unpinned:
        servers.SERVER_CORE = servers.CLIENT_CORE = "0,1"
    seeds = make_seeds(CACHE)
    bounds = [int(bound) for bound in options.bounds.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-admission-") as tmp:
        for round_ in range(options.rounds):
            for bound in bounds:  # alternately, so a noisy minute hurts each alike
                row = _run(bound, options.storm, seeds, Path(tmp), options.profile)
                print(json.dumps({"round": round_, **row}), flush=True)


if __name__ == "__main__":
    main()
