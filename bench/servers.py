"""The servers under test: each started fresh, pinned to core 0, on a free port of 127.0.0.1.

A fresh process per measurement keeps one measurement's leftovers (sockets still closing, chat
rows, heap growth) out of the next, and makes "RSS before" a clean baseline. Every server gets
RLIMIT_NOFILE raised to its hard limit (inherited from the harness, which raises its own).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.seed import install_store
from bench.tokens import JWT_KEY

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SERVER_CORE, CLIENT_CORE = "0", "1"
SERVERS = ("vpiska", "websockets", "node-ws")  # the order of every interleaved round
# HTTP references: `POST /api/v1/events/get` with vpiska's answer (bench/peers/http_*).
HTTP_PEERS = ("hypercorn-raw", "hypercorn-raw+adapter", "starlette-uvicorn", "go-net/http")
ALL_SERVERS = (*SERVERS, *HTTP_PEERS)

# Relaxed limits so vpiska's flood control, slow-consumer guard and sign-in limits never fire
# under load.
VPISKA_ENV = {
    "SERVER_HOST": "127.0.0.1",
    "LOG_LEVEL": "WARNING",
    "JWT_KEY": JWT_KEY,
    "CHAT_RATE_PER_SECOND": "1000000",
    "CHAT_BURST": "1000000",
    "MAX_CHAT_CHARS": "65536",
    "MEMBER_OUTBOX_FRAMES": "4096",
    "SHUTDOWN_GRACE_SECONDS": "0.5",
    "SIGNIN_RATE_PER_MINUTE": "0",
}


@dataclass(frozen=True)
class Running:
    name: str
    port: int
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CACHE = BENCH / ".cache"
GO_SOURCE = BENCH / "peers" / "http_go" / "main.go"
# Where the HTTP peers read the answer they give: vpiska's own, for the same event.
EVENT_ANSWER = CACHE / "event-answer.json"


@functools.cache
def go_binary() -> Path:
    """bench/peers/http_go built with the machine's Go (Debian's golang-go), by source hash."""
    digest = hashlib.sha256(GO_SOURCE.read_bytes()).hexdigest()[:12]
    target = CACHE / f"http-go-{digest}"
    if not target.exists():
        go = shutil.which("go")
        if go is None:
            raise RuntimeError("the Go reference needs Go (Debian: apt-get install golang-go)")
        env = dict(os.environ, GOCACHE=str(CACHE / "go" / "cache"),
                   GOPATH=str(CACHE / "go" / "path"), GO111MODULE="off", CGO_ENABLED="0")
        subprocess.run([go, "build", "-o", str(target), str(GO_SOURCE)], check=True, env=env,
                       cwd=GO_SOURCE.parent)
    return target


def _command(name: str, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PORT=str(port), JWT_KEY=JWT_KEY, EVENT_ANSWER_FILE=str(EVENT_ANSWER))
    peers = BENCH / "peers"
    if name == "vpiska":
        env |= VPISKA_ENV | {"SERVER_PORT": str(port), "DATA_DIR": str(data_dir)}
        return [sys.executable, "-m", "vpiska"], env
    if name == "websockets":
        return [sys.executable, str(peers / "ws_peer.py")], env
    if name == "node-ws":
        return ["node", str(peers / "node_peer.js")], env
    if name == "hypercorn-raw":
        return [sys.executable, str(peers / "http_asgi.py"), "stock"], env
    if name == "hypercorn-raw+adapter":
        return [sys.executable, str(peers / "http_asgi.py"), "adapter"], env
    if name == "starlette-uvicorn":
        return [sys.executable, str(peers / "http_starlette.py")], env
    if name == "go-net/http":
        return [str(go_binary())], env | {"GOMAXPROCS": "1"}
    raise ValueError(f"unknown server {name!r}; expected one of {ALL_SERVERS}")


@contextlib.contextmanager
def running(name: str, store_template: Path | None,
            env: dict[str, str] | None = None, source: Path = REPO) -> Iterator[Running]:
    """Start `name` (vpiska on a copy of `store_template`, with `env` on top of its own, from
    the tree `source`: `python -m vpiska` imports the vpiska of its working directory),
    yield once it accepts TCP connections, and stop it on the way out (SIGTERM, SIGKILL after
    3 s: the store is thrown away, and vpiska's graceful stop of 10,000 rooms alone takes
    several seconds)."""
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        data_dir = Path(tmp) / "data"
        if name == "vpiska":
            assert store_template is not None
            install_store(store_template, data_dir)
        port = free_port()
        command, own_env = _command(name, port, data_dir)
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, *command],
                                    env=own_env | (env or {}), cwd=source,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            wait_listening(proc, port, log_path)
            yield Running(name, port, proc.pid)
        finally:
            stop(proc)


def wait_idle(pid: int, budget: float = 60.0) -> float:
    """Wait until the process uses under 5 % of a core over half a second; the seconds it took.

    Why: vpiska listens before it has started every event's actor; on the 10,000-event store
    that takes seconds of CPU after the port opens, and a measurement then measures it."""
    process = psutil.Process(pid)
    start = time.monotonic()
    while time.monotonic() - start < budget:
        before = process.cpu_times()
        time.sleep(0.5)
        after = process.cpu_times()
        if (after.user + after.system - before.user - before.system) / 0.5 < 0.05:
            break
    return time.monotonic() - start


def wait_listening(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n"
                               + log_path.read_text(errors="replace")[-2000:])
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
