"""A MongoDB wire server of the bench's own, and seeded databases on it.

The server is SecantusDB (`secantusd-py` from bench/requirements.txt, WiredTiger underneath), the
same one the tests run: mongod does not install here. It is GPL-2.0 and only ever run as a
process. It runs unpinned, beside the nodes: its CPU is reported, and the figures it enters are
ratios of vpiska to vpiska on the same server, never a claim about mongod.

A database is seeded by copying a seeded sqlite template (bench/seed.py) through vpiska's own
store API: the same users and events, written the way a node writes them.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymongo
import trio

from bench.servers import free_port
from vpiska.store.mongo import MongoStore
from vpiska.store.sqlite import SqliteStore


@dataclass(frozen=True)
class MongoServer:
    url: str
    pid: int


@contextlib.contextmanager
def running() -> Iterator[MongoServer]:
    """`secantusd-py --standalone` on a free port with a temporary storage path."""
    executable = Path(sys.executable).parent / "secantusd-py"
    with tempfile.TemporaryDirectory(prefix="bench-mongodb-") as tmp, \
            open(Path(tmp) / "secantusd.log", "wb") as log:
        config = Path(tmp) / "secantusd.toml"
        config.write_text("")
        port = free_port()
        proc = subprocess.Popen(
            [str(executable), "--config", str(config), "--standalone", "--host", "127.0.0.1",
             "--port", str(port), "--storage-path", str(Path(tmp) / "data"),
             "--log-level", "WARNING"],
            cwd=tmp, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            url = f"mongodb://127.0.0.1:{port}"
            _wait_ping(url, proc)
            yield MongoServer(url, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ping(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=1000)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {proc.returncode}")
            with contextlib.suppress(pymongo.errors.PyMongoError):
                client.admin.command("ping")
                return
        raise RuntimeError("secantusd-py did not answer ping in 60 s")
    finally:
        client.close()


def seeded_database(server: MongoServer, template: Path) -> str:
    """A new database on `server` holding what the sqlite `template` holds; its name."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    trio.run(_copy, template, server.url, name)
    return name


async def _copy(template: Path, url: str, name: str) -> None:
    source = await SqliteStore.open(template)
    target = await MongoStore.open(url, name)
    try:
        user_ids = await source.user_ids(1_000_000)
        for user_id in user_ids:
            user = await source.user_by_id(user_id)
            if user is not None:
                await target.add_user(user)
        for event in await source.open_events():
            await target.add_event(event)
    finally:
        await target.aclose()
        await source.aclose()
