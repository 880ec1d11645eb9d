"""Fixtures for tests of several vpiska nodes: a Redis of the test's own, `python -m vpiska`
node processes with one JWT key — either on one machine (one data dir: one sqlite file, one
media dir) or as machines of their own (nothing on disk in common: MongoDB and Redis are all
they share) — and TCP proxies to put faults between them. tests/conftest.py registers this
module (`pytest_plugins`), so every test can ask for:

- `redis_server` → RedisServer: a fresh redis-server on 127.0.0.1 without persistence.
- `cluster` → StartCluster: `await cluster(n, redis=redis_server, **env)` starts n nodes with
  REDIS_URL set to that Redis (`redis=None`: plain single-process nodes); more with
  `Cluster.start_node`. Every node still running when the test ends is SIGKILLed.
- `machines` → StartCluster: the same, each node as a machine of its own: a DATA_DIR of its
  own (empty when it starts: a node started later is a fresh machine), and the store in a
  MongoDB database of the test's own on the session's server (`mongodb_url`).
- `tcp_proxy` → StartProxy: `await tcp_proxy(redis_server.port)`, a running TcpProxy
  (tests/helpers/tcp_proxy.py) whose `url()` a node can take as its REDIS_URL.

    async def test_x(cluster: StartCluster, redis_server: RedisServer,
                     tcp_proxy: StartProxy) -> None:
        group = await cluster(2, redis=redis_server)
        proxy = await tcp_proxy(redis_server.port)
        cut_off = await group.start_node(REDIS_URL=proxy.url())
        proxy.cut()
        ...

Without redis-server the tests that need it are skipped with the reason; under CI (CI=true)
they fail instead: .ci/run installs it, so a missing one means CI is broken, not the test.

Nothing here sleeps to wait: each wait is for something observable (a log line, a PING
answer, a process exit), bounded by trio.fail_after.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import pymongo
import pytest
import trio

from tests.helpers.executables import required
from tests.helpers.mongodb_fixtures import new_database_name
from tests.helpers.server import Server
from tests.helpers.tcp_proxy import TcpProxy
from vpiska.config import Config
from vpiska.store import Store, open_store

# Long enough for HS256 (no key-length warning), and not the public default key.
JWT_KEY = "the cluster tests' key, long enough for HS256"
# The longest a node or Redis may take to start, and any other wait here: generous, for two
# loaded cores; a healthy start takes well under a second.
START_SECONDS = 30
WAIT_SECONDS = 30
# Variables of the developer's shell that would change what a node shares or where it
# listens: never inherited, only set by the fixtures or the test.
_NODE_SETTINGS = ("REDIS_URL", "WORKERS", "SERVER_HOST", "SERVER_PORT", "DATA_DIR",
                  "MEDIA_PATH", "MEDIA_STORE", "DB_CONNECTION", "DB_NAME", "JWT_KEY")
_REDIS_READY = "Ready to accept connections"
# How often a state with no wake-up of its own (a process stopped by SIGSTOP) is looked at.
_POLL_SECONDS = 0.005


class OutputLines:
    """The lines a process writes to one pipe, read as they come so the pipe never fills:
    `nursery.start_soon(output.read, process.stdout)`, then `await output.wait_for(…)`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ended = False  # the pipe reached its end: every line is in
        self._changed = trio.Event()

    async def read(self, pipe: trio.abc.ReceiveStream) -> None:
        pending = b""
        try:
            async for chunk in pipe:
                *complete, pending = (pending + chunk).split(b"\n")
                if complete:
                    self.lines.extend(line.decode(errors="replace") for line in complete)
                    self._notify()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            if pending:  # a last line without its newline (the process was killed mid-write)
                self.lines.append(pending.decode(errors="replace"))
            self.ended = True
            self._notify()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once `condition()` holds; it is checked each time a line arrives. Unbounded:
        the caller sets the deadline."""
        while not condition():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


# --- Redis -----------------------------------------------------------------------------------

def redis_server_executable() -> str:
    return required("redis-server", "Debian: apt-get install redis-server", ".ci/run")


async def redis_ping(host: str, port: int) -> bool:
    """Whether a Redis at host:port answers PING with PONG within a second."""
    try:
        with trio.fail_after(1):
            async with await trio.open_tcp_stream(host, port) as stream:
                await stream.send_all(b"PING\r\n")
                reply = b""
                while not reply.endswith(b"\r\n"):
                    chunk = await stream.receive_some()
                    if not chunk:
                        return False
                    reply += chunk
                return reply == b"+PONG\r\n"
    except (OSError, trio.BrokenResourceError, trio.TooSlowError):
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """A redis-server of the test's own on 127.0.0.1: no persistence (`--save ''
    --appendonly no`), in the foreground (`--daemonize no`), its log read continuously.

    `url` (redis://127.0.0.1:PORT) stays the same across `kill()` and `restart()`: like a
    Redis host that crashes and comes back empty.

    Resource handling: the `redis_server` fixture kills it when the test ends.
    Error handling: `start` and `restart` raise RuntimeError, with the server's log, when it
    does not come up; trio.TooSlowError when it takes longer than START_SECONDS.
    """

    host = "127.0.0.1"

    def __init__(self, executable: str, workdir: Path, nursery: trio.Nursery,
                 *options: str) -> None:
        self.port = 0
        self.options = options  # more of redis-server's options (`--replicaof host port`)
        self.log: list[str] = []  # every line each run of it wrote, in order
        self._executable = executable
        self._workdir = workdir
        self._nursery = nursery
        self._process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    async def start(self) -> None:
        """Start on a free port, and return once it answers PING."""
        for _ in range(5):  # another process may take the port between probe and bind
            self.port = _free_port()
            if await self._run():
                return
        raise RuntimeError(f"redis-server found no free port; its log:\n{self._log_tail()}")

    async def kill(self) -> None:
        """SIGKILL, and return once it has exited: its connections are reset by then."""
        if self._process is None:
            return
        process, self._process = self._process, None
        with trio.CancelScope(shield=True):  # also when the test is being cancelled
            process.kill()
            await process.wait()

    async def restart(self) -> None:
        """Kill it if it runs, then start a fresh, empty one on the same port; return once it
        answers PING."""
        await self.kill()
        if not await self._run():
            raise RuntimeError(f"port {self.port} was taken while Redis was down")

    async def ping(self) -> bool:
        """Whether it answers PING (`redis_ping`)."""
        return await redis_ping(self.host, self.port)

    async def _run(self) -> bool:
        """Start redis-server on `self.port`: True once it answers PING, False when the port
        was taken."""
        self._workdir.mkdir(parents=True, exist_ok=True)
        process = await trio.lowlevel.open_process(
            [self._executable, "--bind", self.host, "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--dir", str(self._workdir), "--logfile", "", *self.options],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        output = OutputLines()
        output.lines = self.log  # one log across restarts
        first = len(self.log)
        self._process = process
        self._nursery.start_soon(output.read, process.stdout)
        with trio.fail_after(START_SECONDS):
            await output.wait_for(
                lambda: output.ended or any(_REDIS_READY in line for line in self.log[first:]))
            if output.ended:  # it exited before it was ready
                await process.wait()
                self._process = None
                if any("Address already in use" in line for line in self.log[first:]):
                    return False
                raise RuntimeError(f"redis-server exited with {process.returncode}; its log:\n"
                                   f"{self._log_tail()}")
        if not await self.ping():
            raise RuntimeError(f"redis-server is ready but does not answer PING; its log:\n"
                               f"{self._log_tail()}")
        return True

    def _log_tail(self) -> str:
        return "\n".join(self.log[-20:])


@pytest.fixture
async def redis_server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(redis_server_executable(), tmp_path / "redis", nursery)
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


# --- Nodes -----------------------------------------------------------------------------------

class NodeDidNotStart(Exception):
    """A node exited, or never logged its "serving" line, within START_SECONDS."""


class Node:
    """One `python -m vpiska` process. Its stdout (one JSON object per line) and stderr are
    read continuously by tasks of the test's nursery, so the pipes never fill.

    `url` is the address from the node's own "serving" log line (SERVER_PORT=0 lets the kernel
    pick a free port, so no port is guessed).

    Resource handling: whoever starts a node kills it (`Cluster.aclose` does for its nodes).
    Error handling: `start` raises NodeDidNotStart with the node's output; `lines` raises
    AssertionError for a stdout line that is not a JSON object; waits raise trio.TooSlowError.
    """

    def __init__(self, name: str, process: trio.Process, env: dict[str, str]) -> None:
        self.name = name
        self.env = env  # the whole environment it runs with
        self.url = ""  # http://127.0.0.1:PORT, once started
        self._process = process
        self._stdout = OutputLines()
        self._stderr = OutputLines()
        self._records: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, nursery: trio.Nursery, env: Mapping[str, str], *,
                    name: str = "node") -> Node:
        """Run `python -m vpiska` with exactly `env`; return once it logged "serving" and
        answered GET /healthz on the address that line gave."""
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "vpiska"], env=dict(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None
        assert process.stderr is not None
        node = cls(name, process, dict(env))
        nursery.start_soon(node._stdout.read, process.stdout)
        nursery.start_soon(node._stderr.read, process.stderr)
        try:
            with trio.fail_after(START_SECONDS):
                await node._stdout.wait_for(
                    lambda: node._serving() is not None or node._stdout.ended)
                serving = node._serving()
                if serving is None:
                    code = await process.wait()
                    await node._stderr.wait_for(lambda: node._stderr.ended)
                    raise NodeDidNotStart(f"{name} exited with {code} before serving:\n"
                                          f"{node._output_tail()}")
                node.url = serving["binds"][0]
                # "serving" is logged a moment before vpiska's SIGTERM handler is in place
                # (hypercorn reports its binds before it starts the shutdown trigger), so a
                # SIGTERM right after that line can kill the node outright (exit -15). Once it
                # has answered a request, the handler is in place: hypercorn starts the trigger
                # before it accepts the first connection.
                async with httpx.AsyncClient() as http:
                    alive = await http.get(f"{node.url}/healthz")
                if alive.status_code != 200:
                    raise NodeDidNotStart(f"{name}: GET /healthz answered {alive.status_code}")
        except trio.TooSlowError:
            process.kill()
            raise NodeDidNotStart(f"{name} did not serve within {START_SECONDS} s:\n"
                                  f"{node._output_tail()}") from None
        except BaseException:
            process.kill()
            raise
        return node

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def data_dir(self) -> Path:
        """Its DATA_DIR (the disk of its machine, when it runs as one)."""
        return Path(self.env["DATA_DIR"])

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited (negative: killed by that signal), else None."""
        return self._process.returncode

    @property
    def stderr(self) -> str:
        """What it wrote to stderr so far (nothing, normally: its logs go to stdout)."""
        return "\n".join(self._stderr.lines)

    def lines(self) -> list[dict[str, Any]]:
        """Every line it logged so far, parsed; AssertionError for one that is not a JSON
        object (every line must be one)."""
        for line in self._stdout.lines[len(self._records):]:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                raise AssertionError(f"{self.name} logged a line that is not a JSON object: "
                                     f"{line!r}")
            self._records.append(record)
        return list(self._records)

    async def wait_for_line(self, match: Callable[[dict[str, Any]], bool], *,
                            since: int = 0) -> dict[str, Any]:
        """The first line from index `since` on (`since=len(node.lines())`: only lines still
        to come) for which `match` is true, once it is logged. AssertionError if the node's
        output ends first; trio.TooSlowError after WAIT_SECONDS."""
        checked = since
        found: list[dict[str, Any]] = []

        def logged() -> bool:
            nonlocal checked
            lines = self.lines()
            found.extend(line for line in lines[checked:] if match(line))
            checked = len(lines)
            return bool(found) or self._stdout.ended

        with trio.fail_after(WAIT_SECONDS):
            await self._stdout.wait_for(logged)
        if not found:
            raise AssertionError(f"{self.name} ended (exit {self.returncode}) without the "
                                 f"line:\n{self._output_tail()}")
        return found[0]

    def sigterm(self) -> None:
        self._signal(signal.SIGTERM)

    def sigkill(self) -> None:
        self._signal(signal.SIGKILL)

    async def sigstop(self) -> None:
        """Freeze the process (a paused VM, a long GC pause): it keeps its sockets open and does
        nothing. Returns once the kernel shows it stopped."""
        self._signal(signal.SIGSTOP)
        await self._wait_state(stopped=True)

    async def sigcont(self) -> None:
        """Let a stopped process go on; returns once the kernel shows it no longer stopped."""
        self._signal(signal.SIGCONT)
        await self._wait_state(stopped=False)

    @property
    def stopped(self) -> bool:
        """Whether it is stopped (SIGSTOP), as /proc/PID/stat tells."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:  # gone
            return False
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")

    async def wait(self) -> int:
        """Its exit code once it has exited and all it wrote has been read (negative: killed
        by that signal); trio.TooSlowError after WAIT_SECONDS."""
        with trio.fail_after(WAIT_SECONDS):
            code = await self._process.wait()
            await self._stdout.wait_for(lambda: self._stdout.ended)
            await self._stderr.wait_for(lambda: self._stderr.ended)
        return code

    def _signal(self, signum: signal.Signals) -> None:
        if self._process.returncode is None:
            self._process.send_signal(signum)

    async def _wait_state(self, *, stopped: bool) -> None:
        # The kernel offers no wake-up for a stop or a continue (short of waitpid, which is
        # trio's to call), so /proc is polled; it takes effect within milliseconds.
        with trio.fail_after(WAIT_SECONDS):
            while self.stopped is not stopped and self.returncode is None:  # noqa: ASYNC110
                await trio.sleep(_POLL_SECONDS)

    def _serving(self) -> dict[str, Any] | None:
        for line in self._stdout.lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == "serving":
                    return record
        return None

    def _output_tail(self) -> str:
        return "\n".join(["stdout:", *self._stdout.lines[-20:],
                          "stderr:", *self._stderr.lines[-20:]])


class Cluster:
    """Nodes of one test sharing one JWT key and, when `redis` is given, one Redis. Each node
    listens on its own ephemeral port of 127.0.0.1.

    On one machine (`database=None`) they share one data dir, so one sqlite file and one
    media dir. As machines (`database` = a MongoDB URL and a database name) each node has a
    data dir of its own, `data_dir / <node name>`, empty when it starts, and the store is that
    MongoDB database: as nodes on different machines, they share nothing else.

    `env` holds the settings every node gets on top of the test process's environment (less
    its own vpiska variables: a developer's REDIS_URL never leaks in); `start_node` takes more,
    a value of None removing that variable for the node.

    Resource handling: `aclose` SIGKILLs every node still running (stopped ones too) and
    closes what `server` opened; the `cluster` fixture calls it.
    """

    def __init__(self, nursery: trio.Nursery, data_dir: Path, redis: RedisServer | None,
                 env: Mapping[str, str | None], *,
                 database: tuple[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.redis = redis
        self.jwt_key = JWT_KEY
        self.database = database
        store: dict[str, str | None] = (
            {"DATA_DIR": str(data_dir)} if database is None
            else {"DB_CONNECTION": database[0], "DB_NAME": database[1]})
        self.env: dict[str, str | None] = {
            "SERVER_HOST": "127.0.0.1", "SERVER_PORT": "0", **store,
            "JWT_KEY": JWT_KEY, "REDIS_URL": redis.url if redis is not None else None, **env}
        self.nodes: list[Node] = []  # every node started, in order, running or not
        self._nursery = nursery
        self._names = itertools.count(1)
        self._exit = contextlib.AsyncExitStack()
        self._store: Store | None = None

    @property
    def machines(self) -> bool:
        """Whether each node runs as a machine of its own."""
        return self.database is not None

    async def start_node(self, name: str | None = None, **env: str | None) -> Node:
        """Start one more node with the cluster's settings and `env`; return once it serves.
        As machines, a node is a fresh machine: its data dir is new and empty."""
        name = name or f"node-{next(self._names)}"
        disk: dict[str, str | None] = {}
        if self.machines:
            disk["DATA_DIR"] = str(self.data_dir / name)
            (self.data_dir / name).mkdir(parents=True)  # fails if a machine had that name
        settings = {**self.env, **disk, **env}
        inherited = {k: v for k, v in os.environ.items() if k not in _NODE_SETTINGS}
        full = inherited | {k: v for k, v in settings.items() if v is not None}
        node = await Node.start(self._nursery, full, name=name)
        self.nodes.append(node)
        return node

    async def start_nodes(self, count: int, **env: str | None) -> list[Node]:
        """Start `count` nodes at once (as WORKERS or an orchestrator would); return them once
        all serve, in the order of their names."""
        names = [f"node-{next(self._names)}" for _ in range(count)]
        started: dict[str, Node] = {}

        async def one(name: str) -> None:
            started[name] = await self.start_node(name, **env)

        try:
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(one, name)
        except* NodeDidNotStart as failed:  # one error to read, not a group
            raise NodeDidNotStart("\n".join(map(str, failed.exceptions))) from None
        return [started[name] for name in names]

    async def server(self, node: Node) -> Server:
        """`node` as a Server (tests/helpers/server.py), for tests/helpers/clients.py's Crowd,
        token_for, …: an HTTP client of the node, its configuration as it read it, and the
        shared store, opened here beside the nodes (sqlite in WAL mode takes more connections;
        MongoDB any number of clients)."""
        config = Config.from_env(node.env)
        if self._store is None:
            self._store = await self._exit.enter_async_context(open_store(config))
        http = await self._exit.enter_async_context(
            httpx.AsyncClient(base_url=node.url, timeout=WAIT_SECONDS))
        return Server(node.url, config, http, self._store)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for node in self.nodes:
                node.sigkill()
            for node in self.nodes:
                with contextlib.suppress(trio.TooSlowError):
                    await node.wait()
            await self._exit.aclose()
            if self.database is not None:
                await trio.to_thread.run_sync(_drop_database, *self.database)


def _drop_database(url: str, name: str) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=WAIT_SECONDS * 1000)
    try:
        client.drop_database(name)
    finally:
        client.close()


class StartCluster(Protocol):
    def __call__(self, count: int = 2, *, redis: RedisServer | None,
                 **env: str | None) -> Awaitable[Cluster]: ...


@contextlib.asynccontextmanager
async def _clusters(nursery: trio.Nursery, folder: Callable[[int], Path],
                    database: Callable[[], tuple[str, str]] | None = None
                    ) -> AsyncIterator[StartCluster]:
    """What the `cluster` and `machines` fixtures give a test: each call a cluster of its own
    (its folder `folder(K)` for the K-th, and its own database if `database` makes one), every
    one closed at the end."""
    clusters: list[Cluster] = []

    async def start(count: int = 2, *, redis: RedisServer | None,
                    **env: str | None) -> Cluster:
        group = Cluster(nursery, folder(len(clusters) + 1), redis, env,
                        database=None if database is None else database())
        clusters.append(group)
        await group.start_nodes(count)
        return group

    try:
        yield start
    finally:
        for group in clusters:
            await group.aclose()


@pytest.fixture
async def cluster(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartCluster]:
    """`await cluster(n, redis=redis_server)`: n nodes sharing that Redis and one data dir
    (`redis=None`: plain nodes, REDIS_URL unset). Each call is a cluster of its own (its own
    data dir). Every node is SIGKILLed at the end, if still running."""
    async with _clusters(nursery, lambda k: tmp_path / f"cluster-{k}") as start:
        yield start


@pytest.fixture
async def machines(nursery: trio.Nursery, tmp_path: Path,
                   mongodb_url: str) -> AsyncIterator[StartCluster]:
    """`await machines(n, redis=redis_server)`: n nodes as machines of their own, sharing
    that Redis and one MongoDB database of the cluster's own on the session's server (dropped
    at the end); each node's data dir is `tmp_path / machines-K / <node name>`, new and empty,
    so `Cluster.start_node` replaces a node by a fresh machine. Every node is SIGKILLed at the
    end, if still running."""
    async with _clusters(nursery, lambda k: tmp_path / f"machines-{k}",
                         lambda: (mongodb_url, new_database_name())) as start:
        yield start


# --- Faults between processes ----------------------------------------------------------------

class StartProxy(Protocol):
    def __call__(self, target_port: int, target_host: str = "127.0.0.1"
                 ) -> Awaitable[TcpProxy]: ...


@pytest.fixture
def tcp_proxy(nursery: trio.Nursery) -> StartProxy:
    """`await tcp_proxy(port)`: a running TcpProxy to 127.0.0.1:port, stopped (every
    connection closed) when the test ends."""

    async def start(target_port: int, target_host: str = "127.0.0.1") -> TcpProxy:
        proxy = TcpProxy(target_host, target_port)
        await nursery.start(proxy.serve)
        return proxy

    return start
