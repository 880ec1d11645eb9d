"""WORKERS=N: N nodes of the cluster on one machine, one process each, sharing one port.

Each worker is a whole node (`python -m vpiska` with WORKERS=1) on a core of its own; the
kernel spreads new connections over them (SO_REUSEPORT), and they coordinate through Redis
like nodes on separate machines do. This process only starts them, passes SIGINT/SIGTERM on
(so each hands its rooms over and exits), starts again a worker that dies, and exits when
they all have.

Why processes and not hypercorn's own multi-worker mode: each worker must be a node with a
node id, a heartbeat and leases of its own, started and stopped like any other node — which
is exactly `python -m vpiska`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from vpiska.config import Config

log = logging.getLogger(__name__)

# A worker that keeps dying is not restarted faster than this.
RESTART_DELAY_SECONDS = 1.0


def run_workers(config: Config) -> int:
    """Run `config.workers` nodes until SIGINT/SIGTERM; the first non-zero exit code, or 0."""
    return trio.run(_supervise, config)


async def _supervise(config: Config) -> int:
    with _port_for(config) as port:
        env = {**os.environ, "WORKERS": "1", "SERVER_REUSE_PORT": "true",
               "SERVER_PORT": str(port), "SERVER_HOST": config.host}
        stopping = trio.Event()
        codes: list[int] = []
        async with trio.open_nursery() as nursery:
            for number in range(config.workers):
                nursery.start_soon(_worker, number, env, stopping, codes)
            log.info("workers started", extra={"workers": config.workers, "port": port})
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("stopping workers", extra={"signal": signal.Signals(signum).name})
                    stopping.set()
                    break
    return next((code for code in codes if code != 0), 0)


async def _worker(number: int, env: dict[str, str], stopping: trio.Event,
                  codes: list[int]) -> None:
    """Run worker `number` until stopping; start it again if it dies before that."""
    while True:
        process = await trio.lowlevel.open_process([sys.executable, "-m", "vpiska"], env=env,
                                                   stdin=subprocess.DEVNULL)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pass_stop_on, process, stopping)
            code = await process.wait()
            nursery.cancel_scope.cancel()
        if stopping.is_set():
            codes.append(code)
            return
        log.error("worker died; starting it again",
                  extra={"worker": number, "exit_code": code, "pid": process.pid})
        await trio.sleep(RESTART_DELAY_SECONDS)


async def _pass_stop_on(process: trio.Process, stopping: trio.Event) -> None:
    await stopping.wait()
    process.send_signal(signal.SIGTERM)


@contextmanager
def _port_for(config: Config) -> Iterator[int]:
    """The port the workers share: SERVER_PORT, or one picked now when it is 0. The picking
    socket stays bound (SO_REUSEPORT) until the workers are done, so nobody else takes it."""
    if config.port:
        yield config.port
        return
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.host, 0))
        yield int(sock.getsockname()[1])
