"""`python -m vpiska` as a process of its own, started as an operator would, and what a test
needs around one (its environment, a port for programs that cannot report theirs)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.helpers.server import Server, make_config
from vpiska.store.sqlite import SqliteStore

# The JWT key of servers a test starts as processes: long enough for HS256 (no warning).
JWT_KEY = "a test key that is long enough for HS256!"


@dataclasses.dataclass
class ServerProcess:
    """A `python -m vpiska` a test started, and everything it wrote to stdout and stderr."""

    process: trio.Process
    url: str = ""  # from its "serving" log line
    output: bytearray = dataclasses.field(default_factory=bytearray)
    ended: trio.Event = dataclasses.field(default_factory=trio.Event)  # its output is all read
    _more: trio.Event = dataclasses.field(default_factory=trio.Event)  # set at each piece read

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def text(self) -> str:
        return self.output.decode(errors="replace")

    async def wait_for_output(self, done: Callable[[ServerProcess], bool]) -> None:
        """Return once `done(self)` holds, checked as each piece of its output is read; fails
        if its output ends first. Put a deadline around it (`trio.fail_after`)."""
        while not done(self):
            if self.ended.is_set():
                raise AssertionError(f"its output ended before the condition:\n{self.text()}")
            await self._more.wait()

    def _read(self, chunk: bytes | bytearray) -> None:
        self.output += chunk
        self._more.set()
        self._more = trio.Event()

    def _end(self) -> None:
        self.ended.set()
        self._more.set()

    async def exit_code(self) -> int:
        """Wait until the process has exited and all it wrote has been read."""
        code = await self.process.wait()
        await self.ended.wait()
        return code


def serving_url(line: bytes | bytearray) -> str | None:
    """The address in vpiska's "serving" log line, if `line` is that line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") != "serving":
        return None
    return str(record["binds"][0])


@asynccontextmanager
async def vpiska_process(tmp_path: Path, command: list[str] | None = None,
                         **settings: str) -> AsyncIterator[ServerProcess]:
    """Start `python -m vpiska` (or `command`) with `settings` and yield it once it serves.

    Its port is the kernel's choice (SERVER_PORT=0), read from its "serving" log line: a free
    port picked beforehand could be taken by another process before the server binds it, and
    the test would then talk to that process. Its output is read all along (a full pipe would
    stop it) into `output`.

    It is yielded once it has also answered a request: the server handles SIGTERM only from a
    moment after it logs "serving" (hypercorn starts the shutdown trigger, which installs the
    handler, after it reports its binds), and a SIGTERM in between kills it outright (-15).
    The request was served by tasks started after the trigger's, so the handler is in place.

    Resource handling: on the way out the process is killed unless it has exited, and waited
    for. Error handling: AssertionError, with its output, if it exits before serving.
    """
    process = await trio.lowlevel.open_process(
        command or [sys.executable, "-m", "vpiska"],
        env=env(tmp_path, **{"SERVER_PORT": "0", **settings}),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    served = ServerProcess(process)
    settled = trio.Event()  # serving, or gone

    async def read() -> None:
        assert process.stdout is not None
        scanned = 0
        async with process.stdout:
            async for chunk in process.stdout:
                served._read(chunk)
                while not served.url and (end := served.output.find(b"\n", scanned)) >= 0:
                    served.url = serving_url(served.output[scanned:end]) or ""
                    scanned = end + 1
                if served.url:
                    settled.set()
        served._end()
        settled.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)  # ends when the process has gone and its output is read
        try:
            with trio.fail_after(30):
                await settled.wait()
            if not served.url:
                raise AssertionError(f"vpiska exited ({await process.wait()}) before "
                                     f"serving:\n{served.text()}")
            async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
                assert (await http.get("/healthz")).status_code == 200
            yield served
        finally:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


def free_port() -> int:
    """A port that was free a moment ago. Racy: another process can take it before the program
    it is meant for binds it. vpiska binds port 0 and says which port it got (`vpiska_process`);
    this is only for programs that cannot tell (nginx, redis-server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until_serving(url: str) -> None:
    """Poll `url` until it answers, for at most 30 s. Only for a server whose port is known to
    be its own: polling a port picked beforehand can reach another process (`free_port`)."""
    async with httpx.AsyncClient() as client:
        with trio.fail_after(30):
            while True:
                try:
                    await client.get(f"{url}/api/v1/nothing")
                    return
                except httpx.TransportError:  # not listening yet: nothing tells when it will
                    await trio.sleep(0.05)  # how often to ask, not a wait for anything


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATA_DIR": str(tmp_path / "data"), "SERVER_HOST": "127.0.0.1", **extra}


@asynccontextmanager
async def server_process(tmp_path: Path, port: int) -> AsyncIterator[trio.Process]:
    """`python -m vpiska` on a port chosen beforehand (`free_port`: racy, see there).
    `vpiska_process` lets the server pick its port; this is kept for tests that still pass one.
    """
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "vpiska"],
        env=env(tmp_path, SERVER_PORT=str(port), JWT_KEY=JWT_KEY,
                CHAT_RATE_PER_SECOND="1000", CHAT_BURST="1000"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until_serving(f"http://127.0.0.1:{port}")
        yield process
    finally:
        process.kill()
        await process.wait()


@asynccontextmanager
async def as_server(tmp_path: Path, port: int, http: httpx.AsyncClient) -> AsyncIterator[Server]:
    """`server_process` as a Server (tests/helpers/server.py), with its store file opened
    beside it."""
    config = make_config(tmp_path, jwt_key=JWT_KEY)
    store = await SqliteStore.open(tmp_path / "data" / "vpiska.db")
    try:
        yield Server(f"http://127.0.0.1:{port}", config, http, store)
    finally:
        await store.aclose()
