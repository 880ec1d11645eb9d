"""One server process: store, app and hypercorn under one trio nursery."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from functools import partial

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from vpiska.app import Services, create_app
from vpiska.config import Config
from vpiska.store import open_store

log = logging.getLogger(__name__)


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown_trigger` returns (default: SIGINT or SIGTERM), then drain and return.

    `task_status.started` gets hypercorn's bound addresses, e.g. ["http://127.0.0.1:5000"], once
    the listening socket accepts connections.
    """
    async with open_store(config) as store:
        app = create_app(Services.build(config, store))
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(
                    hypercorn.trio.serve,
                    app,
                    _hypercorn_config(config),
                    shutdown_trigger=shutdown_trigger or _signalled,
                )
            )
            log.info("serving", extra={"binds": binds, "store": config.store.kind})
            task_status.started(binds)
    log.info("stopped")


async def _signalled() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("shutting down", extra={"signal": signal.Signals(signum).name})
            return


def _hypercorn_config(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{config.host}:{config.port}"]
    hc.graceful_timeout = config.shutdown_grace_seconds
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.websocket_max_message_size = config.ws_max_frame_bytes
    return hc
