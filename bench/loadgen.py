"""The load generator: picows WebSocket clients on uvloop, in a process of its own.

Why picows on uvloop: frames are parsed in C and each reaches Python as one callback, so one
core of client keeps up with servers that write far more frames than they read; the harness
pins this process to a core of its own and reports its CPU next to the server's, so a row where
the client, not the server, was the limit is visible (and flagged).

Modes (`python -m bench.loadgen MODE …`; each prints one JSON object as its last stdout line):

- `fanout`: N members join one room; K of them send round-robin, as fast as the server absorbs
  with a bounded window (at most W messages, i.e. W·N deliveries, in flight), so the figure is
  the server's rate, not a queue filling up. Reports chatMessage frames received per second,
  summed over all N members (the senders get their own lines too).
- `latency`: the same room, K senders at a fixed total rate; every delivery's send-to-receive
  time (the send time, from this process's monotonic clock, is inside the message text).
- `connect`: opens N connections to one room with `--in-flight` handshakes at a time
  (handshakes/s), lets them sit idle, and reports the server's RSS growth per connection.

Every loop is bounded in count and in time, and the only target is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import resource
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psutil
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.tokens import forge_token

CHAT = b"chatMessage/"
PATH = "/api/v1/websockets/event"
TEXT_BYTES = 64  # every chat line's text: "~<send time ns>~" padded with "x"
PAD = b"x" * TEXT_BYTES
CONNECT_TIMEOUT = 15.0
TEXT, CLOSE = WSMsgType.TEXT, WSMsgType.CLOSE


class Crowd:
    """The client side of one room: counters that every member's callback updates."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.members: list[Member] = []
        self.received = 0  # chatMessage frames, over all members
        self.reached = 0  # members that have had at least one chatMessage
        self.closed = 0  # members whose connection ended
        self.sent = 0
        self.senders: list[Member] = []

    def chat(self, payload: bytes) -> None:
        self.received += 1

    def resize(self, n: int) -> None:
        self.n = n

    def send_next(self) -> None:
        """One chat line from the next sender (round-robin), stamped with the time now."""
        stamp = b"~%d~" % time.perf_counter_ns()
        transport = self.senders[self.sent % len(self.senders)].transport
        if transport is not None:
            transport.send(TEXT, CHAT + stamp + PAD[len(stamp):])
        self.sent += 1


class Windowed(Crowd):
    """Fan-out: send one more line whenever fewer than `window` lines are undelivered."""

    def __init__(self, n: int, window: int) -> None:
        super().__init__(n)
        self.sending = False
        self.window = window
        self.slack = (window - 1) * n

    def resize(self, n: int) -> None:
        self.n = n
        self.slack = (self.window - 1) * n

    def chat(self, payload: bytes) -> None:
        self.received += 1
        if self.sending and self.sent * self.n - self.received <= self.slack:
            self.send_next()


class Timed(Crowd):
    """Latency: record the delay of every delivery of a line sent in [start_ns, end_ns)."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.start_ns = sys.maxsize
        self.end_ns = sys.maxsize
        self.delays: list[int] = []

    def chat(self, payload: bytes) -> None:
        now = time.perf_counter_ns()
        self.received += 1
        i = payload.find(b"~")
        sent = int(payload[i + 1:payload.find(b"~", i + 1)])
        if self.start_ns <= sent < self.end_ns:
            self.delays.append(now - sent)


class Member(WSListener):  # type: ignore[misc]
    def __init__(self, crowd: Crowd) -> None:
        self.crowd = crowd
        self.chat = crowd.chat  # bound once: this callback runs for every frame
        self.transport: WSTransport | None = None
        self.has_chat = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is TEXT:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(CHAT):
                if not self.has_chat:
                    self.has_chat = True
                    self.crowd.reached += 1
                self.chat(payload)
        elif kind is CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.crowd.closed += 1


@dataclass
class Sample:
    """A point in time: what was received, and CPU seconds used so far by the server, the
    client and the whole machine (user + system time of every process, interrupts aside)."""

    t: float
    received: int
    sent: int
    server_cpu: float
    client_cpu: float
    machine_cpu: float


class Probe:
    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self.client = psutil.Process()

    def sample(self, crowd: Crowd) -> Sample:
        s, c, m = self.server.cpu_times(), self.client.cpu_times(), psutil.cpu_times()
        return Sample(time.perf_counter(), crowd.received, crowd.sent, s.user + s.system,
                      c.user + c.system, m.user + m.nice + m.system)

    @staticmethod
    def rates(a: Sample, b: Sample) -> dict[str, float]:
        """CPU shares over the window; `other_cpu` is what the rest of the machine used, so
        a measurement disturbed by another job is visible."""
        wall = b.t - a.t
        server, client = b.server_cpu - a.server_cpu, b.client_cpu - a.client_cpu
        other = b.machine_cpu - a.machine_cpu - server - client
        return {"seconds": wall, "server_cpu": server / wall, "client_cpu": client / wall,
                "other_cpu": max(0.0, other / wall)}


async def connect_all(crowd: Crowd, port: int, event_id: str, count: int, in_flight: int,
                      budget: float) -> dict[str, Any]:
    """Open `count` members, `in_flight` handshakes at a time, for at most `budget` seconds.

    Returns handshakes/s over all of them and over the first 1000 (a room's join cost can grow
    with its size), the seconds taken, and the failures."""
    tokens = [forge_token(str(uuid.uuid4()), f"member-{i}") for i in range(count)]
    numbers = itertools.count()
    failures = 0
    first_1000 = 0.0
    start = time.perf_counter()
    deadline = start + budget

    async def worker() -> None:
        nonlocal failures, first_1000
        while (i := next(numbers)) < count and time.perf_counter() < deadline:
            url = f"ws://127.0.0.1:{port}{PATH}?accessToken={tokens[i]}&eventId={event_id}"
            try:
                _, member = await ws_connect(lambda: Member(crowd), url,
                                             websocket_handshake_timeout=CONNECT_TIMEOUT,
                                             read_buffer_init_size=4096)
            except Exception:  # refused, reset or timed out: counted, not fatal
                failures += 1
                continue
            crowd.members.append(member)
            if len(crowd.members) == min(count, 1000):
                first_1000 = time.perf_counter() - start

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    seconds = time.perf_counter() - start
    opened = len(crowd.members)
    return {"members": opened, "connect_failures": failures, "connect_seconds": seconds,
            "handshakes_per_s": opened / seconds,
            "handshakes_per_s_first_1000": min(opened, 1000) / first_1000 if first_1000 else 0.0}


async def settle_room(crowd: Crowd, budget: float) -> bool:
    """Wait until every member is in the room (a server may still be adding the last joiners
    after their handshakes): send a marker line, wait for its deliveries to stop arriving, and
    repeat until every member has had one; then zero the counters. False on time-out."""
    deadline = time.perf_counter() + budget
    while crowd.reached < len(crowd.members) and time.perf_counter() < deadline:
        before = crowd.received
        crowd.send_next()
        last = -1
        while (last != crowd.received or last == before) and time.perf_counter() < deadline:
            last = crowd.received
            await asyncio.sleep(0.2)
    if isinstance(crowd, Timed):
        crowd.delays.clear()
    crowd.received = crowd.sent = 0
    return crowd.reached == len(crowd.members)


async def drain(crowd: Crowd, budget: float) -> int:
    """Wait for lines already sent to arrive; the number of deliveries still missing."""
    deadline = time.perf_counter() + budget
    expected = lambda: crowd.sent * len(crowd.members)  # noqa: E731
    # Polled: the counters are bumped by frame callbacks, where setting an Event per frame
    # would cost more than this loop.
    while crowd.received < expected() and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return max(0, expected() - crowd.received)


def close_all(crowd: Crowd) -> None:
    for member in crowd.members:
        if member.transport is not None:
            member.transport.disconnect()


def percentile(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run_room(args: argparse.Namespace) -> dict[str, Any]:
    crowd: Crowd = Windowed(args.n, args.window) if args.mode == "fanout" else Timed(args.n)
    probe = Probe(args.server_pid)
    result = await connect_all(crowd, args.port, args.event_id, args.n, args.in_flight,
                               args.connect_budget)
    crowd.senders = crowd.members[:args.senders]
    crowd.resize(len(crowd.members))  # a slow server may have let fewer than N join
    if not crowd.senders:
        return result | {"error": "no member could connect"}
    gc.collect()
    gc.freeze()  # the members live to the end: keep the collector from walking them
    result["settled"] = await settle_room(crowd, args.settle_budget)
    if isinstance(crowd, Windowed):
        crowd.sending = True
        for _ in range(args.window):
            crowd.send_next()
        await asyncio.sleep(args.warmup)
        a = probe.sample(crowd)
        await asyncio.sleep(args.seconds)
        b = probe.sample(crowd)
        crowd.sending = False
    else:
        assert isinstance(crowd, Timed)
        await pace(crowd, args.rate, args.warmup)
        a = probe.sample(crowd)
        crowd.start_ns = time.perf_counter_ns()
        await pace(crowd, args.rate, args.seconds)
        crowd.end_ns = time.perf_counter_ns()
        b = probe.sample(crowd)
    result |= Probe.rates(a, b)
    result["delivered_per_s"] = (b.received - a.received) / result["seconds"]
    result["sent_per_s"] = (b.sent - a.sent) / result["seconds"]
    result["undelivered"] = await drain(crowd, 5.0)
    result["disconnected"] = crowd.closed
    if isinstance(crowd, Timed):
        delays = sorted(crowd.delays)
        result |= {"samples": len(delays), "p50_ms": percentile(delays, 0.50) / 1e6,
                   "p99_ms": percentile(delays, 0.99) / 1e6,
                   "max_ms": (delays[-1] if delays else float("nan")) / 1e6}
    close_all(crowd)
    return result


async def pace(crowd: Crowd, rate: float, seconds: float) -> None:
    """Send lines at `rate` per second for `seconds`: one at once, then one every 1/rate s
    (at least one line, so a slow room still yields a measurement); late wake-ups catch up."""
    start = time.perf_counter()
    for k in range(max(1, math.ceil(rate * seconds))):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        crowd.send_next()
    await asyncio.sleep(max(0.0, start + seconds - time.perf_counter()))


async def run_connect(args: argparse.Namespace) -> dict[str, Any]:
    crowd = Crowd(args.n)
    probe = Probe(args.server_pid)
    await asyncio.sleep(0.5)
    rss_before = probe.server.memory_info().rss
    a = probe.sample(crowd)
    result = await connect_all(crowd, args.port, args.event_id, args.n, args.in_flight,
                               args.connect_budget)
    result |= Probe.rates(a, probe.sample(crowd))
    await asyncio.sleep(args.idle)
    rss_after = probe.server.memory_info().rss
    growth = (rss_after - rss_before) / max(1, result["members"])
    result |= {"rss_before": rss_before, "rss_after": rss_after,
               "rss_per_connection_kib": growth / 1024, "disconnected": crowd.closed}
    close_all(crowd)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("fanout", "latency", "connect"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--event-id", required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--n", type=int, required=True, help="members in the room")
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--window", type=int, default=16, help="fanout: lines in flight")
    parser.add_argument("--rate", type=float, default=100.0, help="latency: lines per second")
    parser.add_argument("--in-flight", type=int, default=50, help="handshakes at a time")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--idle", type=float, default=2.0, help="connect: idle before RSS")
    parser.add_argument("--connect-budget", type=float, default=60.0,
                        help="seconds allowed for opening the N connections")
    parser.add_argument("--settle-budget", type=float, default=30.0,
                        help="seconds allowed for every member to be in the room")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runner = run_connect if args.mode == "connect" else run_room
    print(json.dumps(uvloop.run(runner(args))), flush=True)


if __name__ == "__main__":
    main()
