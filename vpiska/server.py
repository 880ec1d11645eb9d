"""One server process: store, app and hypercorn under one trio nursery."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from functools import partial

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from vpiska.actors import EventSupervisor
from vpiska.app import Services, create_app
from vpiska.config import Config
from vpiska.http import hypercorn_adapter
from vpiska.http.websocket import EventSocketEndpoint
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
    adapted = hypercorn_adapter.install(enabled=config.hypercorn_adapter)
    async with open_store(config) as store:
        supervisor = EventSupervisor(store, config)
        # The supervisor's nursery is ours, outside hypercorn's: under hypercorn.trio.serve,
        # tasks in quart-trio's app.nursery are cancelled the moment serving ends, with no
        # grace; here the rooms get to finish their queued writes and close their sockets.
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            services = Services.build(config, store, supervisor)
            app = EventSocketEndpoint(create_app(services), config, services.tokens,
                                      supervisor, store)

            async def drain_then_stop_serving() -> None:
                await (shutdown_trigger or _signalled)()
                await supervisor.stop()

            binds = await nursery.start(
                partial(
                    hypercorn.trio.serve,
                    app,
                    _hypercorn_config(config),
                    shutdown_trigger=drain_then_stop_serving,
                )
            )
            log.info("serving", extra={"binds": binds, "store": config.store.kind,
                                       "hypercorn_adapter": adapted})
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
    hc.websocket_ping_interval = config.ws_ping_seconds
    # A live peer answers every ping, so something is read at least once per interval; a peer
    # silent for two intervals is gone (hypercorn sends pings but leaves timing out to us).
    hc.read_timeout = 2 * config.ws_ping_seconds  # type: ignore[assignment]
    return hc
