"""Fixture `redis_sentinels`: a Redis primary, its replica and three Sentinels watching them,
all Debian's (`redis-server`, `redis-sentinel`), of the test's own on free ports of 127.0.0.1.
tests/conftest.py registers this module (`pytest_plugins`).

    async def test_x(cluster: StartCluster, redis_sentinels: Sentinels) -> None:
        group = await cluster(3, redis=None, REDIS_URL=redis_sentinels.url)
        await redis_sentinels.fail_over()  # the primary killed; back once the replica is it

The Sentinels decide quickly (a primary is down after DOWN_AFTER_MS without an answer), so a
failover takes a few seconds. Every wait is for a state the Sentinels or the servers report,
asked again until it holds, bounded by WAIT_SECONDS: there is nothing else to wait on.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import coredis
import pytest
import trio

from tests.helpers.cluster_fixtures import (
    START_SECONDS,
    WAIT_SECONDS,
    OutputLines,
    RedisServer,
    _free_port,
    redis_server_executable,
)
from tests.helpers.executables import required

SERVICE = "vpiska"
DOWN_AFTER_MS = 1000
# Also how long a failed election waits before the next (twice this): short, for a test.
FAILOVER_TIMEOUT_MS = 2000
_SENTINEL_READY = "+monitor master"
_POLL_SECONDS = 0.05
_T = TypeVar("_T")


def redis_sentinel_executable() -> str:
    return required("redis-sentinel", "Debian: apt-get install redis-sentinel", ".ci/run")


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Ask `check` until it is true, within WAIT_SECONDS (then fail saying `what`)."""
    with trio.move_on_after(WAIT_SECONDS):
        while not await check():  # noqa: ASYNC110 (Redis and Sentinels: processes of their own)
            await trio.sleep(_POLL_SECONDS)  # how often to ask, not a wait for anything
        return
    raise AssertionError(f"not within {WAIT_SECONDS} s: {what}")


class SentinelProcess:
    """One redis-sentinel; its config file (which it rewrites as it learns) in `workdir`."""

    host = "127.0.0.1"

    def __init__(self, executable: str, workdir: Path, nursery: trio.Nursery) -> None:
        self.port = _free_port()
        self.log = OutputLines()
        self._executable = executable
        self._workdir = workdir
        self._nursery = nursery
        self._process: trio.Process | None = None

    async def start(self, primary_port: int) -> None:
        self._workdir.mkdir(parents=True, exist_ok=True)
        config = self._workdir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind {self.host}\ndaemonize no\nlogfile \"\"\n"
            f"dir {self._workdir}\n"
            f"sentinel monitor {SERVICE} {self.host} {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n")
        process = await trio.lowlevel.open_process(
            [self._executable, str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        self._process = process
        self._nursery.start_soon(self.log.read, process.stdout)
        with trio.fail_after(START_SECONDS):
            await self.log.wait_for(lambda: self.log.ended or any(
                _SENTINEL_READY in line for line in self.log.lines))
        if self.log.ended:
            raise RuntimeError("redis-sentinel exited; its log:\n"
                               + "\n".join(self.log.lines[-20:]))

    async def kill(self) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()

    async def ask(self, question: Callable[[coredis.Redis[str]], Awaitable[_T]]) -> _T | None:
        """`question` to this Sentinel (None if it does not answer within a second)."""
        try:
            with trio.fail_after(1):
                async with coredis.Redis(self.host, self.port, decode_responses=True) as client:
                    return await question(client)
        except (coredis.exceptions.RedisError, OSError, trio.TooSlowError):
            return None


class Sentinels:
    """A primary, its replica and three Sentinels; `url` is REDIS_URL for the nodes.

    Resource handling: the `redis_sentinels` fixture kills every process when the test ends.
    """

    def __init__(self, nursery: trio.Nursery, workdir: Path) -> None:
        self._nursery = nursery
        self._workdir = workdir
        executable = redis_server_executable()
        self.primary = RedisServer(executable, workdir / "primary", nursery)
        self.replica: RedisServer | None = None
        self._executable = executable
        sentinel = redis_sentinel_executable()
        self.sentinels = [SentinelProcess(sentinel, workdir / f"sentinel-{n}", nursery)
                          for n in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    async def start(self) -> None:
        """Start them all; return once the replica has synced and each Sentinel knows the
        replica and the two other Sentinels (without which no failover can be agreed)."""
        await self.primary.start()
        self.replica = RedisServer(self._executable, self._workdir / "replica", self._nursery,
                                   "--replicaof", self.primary.host, str(self.primary.port))
        await self.replica.start()
        for sentinel in self.sentinels:
            await sentinel.start(self.primary.port)

        async def watching() -> bool:
            for sentinel in self.sentinels:
                replicas = await sentinel.ask(lambda c: c.sentinel_replicas(SERVICE))
                peers = await sentinel.ask(lambda c: c.sentinel_sentinels(SERVICE))
                if replicas is None or peers is None or len(peers) != 2:
                    return False
                if not any(replica.get("master-link-status") == "ok"
                           and not replica.get("is_sdown") for replica in replicas):
                    return False
            return True

        await until(watching, "the Sentinels watching the primary, its replica and each other")

    async def primary_port(self) -> set[int]:
        """The port of the primary as each Sentinel names it now."""
        named: set[int] = set()
        for sentinel in self.sentinels:
            address = await sentinel.ask(
                lambda c: c.sentinel_get_master_addr_by_name(SERVICE))
            if address is not None:
                named.add(int(address[1]))
        return named

    async def fail_over(self) -> RedisServer:
        """Kill the primary; return the replica once every Sentinel names it the primary."""
        assert self.replica is not None
        replica = self.replica
        await self.primary.kill()

        async def promoted() -> bool:
            return await self.primary_port() == {replica.port}

        await until(promoted, "every Sentinel naming the replica the primary")
        self.primary, self.replica = replica, None
        return replica

    async def aclose(self) -> None:
        for sentinel in self.sentinels:
            await sentinel.kill()
        await self.primary.kill()
        if self.replica is not None:
            await self.replica.kill()


@pytest.fixture
async def redis_sentinels(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Sentinels]:
    group = Sentinels(nursery, tmp_path / "sentinels")
    try:
        await group.start()
        yield group
    finally:
        await group.aclose()
