"""Chat persistence and accounts throughput: the figures the actor and store are judged by.

- Chat: K senders in one event, each sending a line and waiting until the room broadcasts it
  (so it is in the store), through the real EventActor and a real sqlite file. With one
  sender every line is its own write; with many, group commit writes what queued meanwhile in
  one transaction. Figure: lines persisted per second, and the mean lines per write. Beside
  them, the process's CPU time per line (event loop and store thread): the waits of the
  thread hand-overs and for a core are not in it, so on a shared machine it moves less than
  lines per second with what else runs (cold caches after a switch still show in it). Each
  figure twice, alternately: on the server core alone (as `make bench` runs every server) and
  free to use both cores (docs/chat-lines.md, "One core or two").
- Accounts: sign-ups and logins per second through HTTP against `python -m vpiska`, argon2id
  included, with 8 requests in flight (httpx).

Run: `make bench` (after the peer comparison) or `python -m bench.persist [--quick]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.servers import SERVER_CORE
from vpiska.actors.commands import Chat, Join
from vpiska.actors.frames import Frame
from vpiska.actors.member import CloseCode, Member
from vpiska.actors.supervisor import EventSupervisor
from vpiska.auth import Identity
from vpiska.config import Config, StoreLocation
from vpiska.domain import Coordinates, new_id
from vpiska.store.sqlite import SqliteStore

PERSIST_HEADING = "## 7. Chat persistence and accounts (vpiska only)"


async def chat_lines_per_second(senders: int, seconds: float) -> tuple[float, float, float]:
    """Lines persisted per second, mean lines per store write, CPU seconds per line."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(store=StoreLocation("sqlite", f"{tmp}/db"), media_path=Path(tmp) / "m",
                        member_outbox_frames=100_000)
        store = await SqliteStore.open(config.store.target)
        writes = 0
        append = store.append_chat

        async def counted(*args: Any, **kwargs: Any) -> None:
            nonlocal writes
            writes += 1
            await append(*args, **kwargs)

        store.append_chat = counted  # type: ignore[method-assign,assignment]
        supervisor = EventSupervisor(store, config)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            event = await supervisor.open_event(new_id(), "bench", "a", Coordinates(0, 0))
            room = supervisor.room(event.id)
            assert room is not None
            done = 0
            deadline = trio.current_time() + seconds
            # One observer member sees every line and wakes the sender waiting for it, so a
            # line costs one delivery, not one per sender: this measures the store path.
            stored: dict[str, trio.Event] = {}
            observer = Member(Identity(new_id(), "observer", ""), Observer(stored))
            await room.ask(lambda reply: Join(observer, reply))

            async def sender(i: int) -> None:
                nonlocal done
                identity = Identity(new_id(), f"u{i}", "")
                k = 0
                while trio.current_time() < deadline:
                    text = f"s{i}-{k}"
                    stored[text] = landed = trio.Event()
                    await room.send(Chat(identity, text))
                    await landed.wait()  # broadcast, so in the store
                    done += 1
                    k += 1

            started, cpu_started = trio.current_time(), time.process_time()
            async with trio.open_nursery() as crowd:
                for i in range(senders):
                    crowd.start_soon(sender, i)
            elapsed = trio.current_time() - started
            cpu = time.process_time() - cpu_started
            await supervisor.stop()
        await store.aclose()
        return done / elapsed, done / max(writes, 1), cpu / max(done, 1)


class Observer:
    """The observer member's outbox: a chat frame wakes the sender of its line."""

    def __init__(self, stored: dict[str, trio.Event]) -> None:
        self._stored = stored

    def deliver(self, frame: Frame) -> None:
        if frame.text.startswith("chatMessage/"):
            text = frame.text.rsplit('"message":"', 1)[1][:-2]
            landed = self._stored.pop(text, None)
            if landed is not None:
                landed.set()

    def deliver_all(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            self.deliver(frame)

    def finish(self, code: CloseCode) -> None:
        pass

    def abort(self, code: CloseCode) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def accounts_per_second(seconds: float) -> tuple[float, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DATA_DIR": tmp, "SERVER_PORT": str(port), "LOG_LEVEL": "WARNING",
               "SERVER_HOST": "127.0.0.1",
               "SIGNIN_RATE_PER_MINUTE": "0"}  # one client address signs up a thousand
        server = await trio.lowlevel.open_process(
            [sys.executable, "-m", "vpiska"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                with trio.fail_after(30):
                    while True:
                        try:
                            await http.get("/api/v1/nothing")
                            break
                        except httpx.TransportError:
                            await trio.sleep(0.1)
                phones = iter(range(9_000_000_000, 9_999_999_999))

                async def run(kind: str) -> float:
                    count = 0
                    deadline = time.perf_counter() + seconds

                    async def worker() -> None:
                        nonlocal count
                        while time.perf_counter() < deadline:
                            if kind == "signup":
                                phone = str(next(phones))
                                body = {"name": phone, "phone": phone, "password": "secret1",
                                        "confirmPassword": "secret1"}
                                path = "/api/v1/users/create"
                            else:
                                body = {"phone": "9000000000", "password": "secret1"}
                                path = "/api/v1/users/login"
                            answer = (await http.post(path, json=body)).json()
                            assert answer["isSuccess"], answer
                            count += 1

                    started = time.perf_counter()
                    async with trio.open_nursery() as nursery:
                        for _ in range(8):
                            nursery.start_soon(worker)
                    return count / (time.perf_counter() - started)

                signups = await run("signup")
                logins = await run("login")  # 9000000000 was the first sign-up
                return signups, logins
        finally:
            server.terminate()
            await server.wait()


@contextlib.contextmanager
def on_cores(cores: set[int] | None) -> Iterator[None]:
    """Every thread of this process, and those they start meanwhile, on `cores` (all the
    process may use if None); as before afterwards. Every thread: the store's may be one of
    trio's cached worker threads, started before."""
    threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    before = {tid: os.sched_getaffinity(tid) for tid in threads}
    if cores is not None:
        for tid in threads:
            os.sched_setaffinity(tid, cores)
    try:
        yield
    finally:
        for tid, affinity in before.items():
            with contextlib.suppress(ProcessLookupError):  # a thread that has ended since
                os.sched_setaffinity(tid, affinity)


async def main(quick: bool) -> str:
    seconds = 2.0 if quick else 5.0
    rounds = 1 if quick else 3
    rows = []
    for senders in (1, 10, 100):
        # Alternately on the server core alone (as `make bench` runs every server) and free to
        # use both cores, so that a shared machine's drift falls on both columns alike.
        runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        for _ in range(rounds):
            for pinned in (True, False):
                with on_cores({int(SERVER_CORE)} if pinned else None):
                    runs[pinned].append(await chat_lines_per_second(senders, seconds))
        one, both = runs[True], runs[False]
        cells = [f"{statistics.median(r[0] for r in one):,.0f}",
                 f"{statistics.median(r[0] for r in both):,.0f}",
                 f"{statistics.median(r[1] for r in one + both):.1f}",
                 f"{statistics.median(r[2] for r in one) * 1e6:.1f}",
                 f"{statistics.median(r[2] for r in both) * 1e6:.1f}"]
        rows.append(f"| {senders} | {' | '.join(cells)} |")
    # A shared machine's other work shows in these figures (the store's thread and the event
    # loop wait for a core at every hand-over): said next to them, so runs can be compared.
    load = os.getloadavg()[0]
    accounts = [await accounts_per_second(seconds) for _ in range(rounds)]
    signups = statistics.median(a[0] for a in accounts)
    logins = statistics.median(a[1] for a in accounts)
    return "\n".join([
        "",
        PERSIST_HEADING,
        "",
        f"`python -m bench.persist` ({'quick' if quick else 'full'}: medians of {rounds}, "
        f"{seconds:.0f} s each). Chat: senders in one event, each waiting for its own line to "
        "be broadcast (so stored) before sending the next, through the EventActor and a sqlite "
        "file; one observer member receives the lines. Each figure twice, alternately: with "
        f"the process on core {SERVER_CORE} alone, as every server in `make bench` runs, and "
        "free to use both cores, where each hand-over to the store's thread and back may cross "
        "cores (docs/chat-lines.md). Load average (1 min) after them: "
        f"{load:.1f}.",
        "",
        "| senders | lines persisted/s, 1 core | lines persisted/s, 2 cores "
        "| lines per store write | process CPU µs per line, 1 core | same, 2 cores |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Accounts through HTTP, 8 requests in flight, argon2id (m=12 MiB, t=3, p=1) included: "
        f"**{signups:,.1f} sign-ups/s**, **{logins:,.1f} logins/s**.",
        "",
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    section = trio.run(main, parser.parse_args().quick)
    print(section)
    # Replaces an earlier run's section (bench.run keeps it when it rewrites the file).
    path = Path("BENCHMARKS.md")
    text = path.read_text() if path.exists() else ""
    if PERSIST_HEADING in text:
        text = text[:text.index(PERSIST_HEADING)].rstrip("\n") + "\n"
    path.write_text(text + section)
