"""One server process: store, event rooms and hypercorn under one trio nursery, and its shutdown.

Shutdown runs in the order of ARCHITECTURE.md: stop accepting, then drain. When the trigger
fires (SIGINT/SIGTERM by default) hypercorn closes its listening sockets; once they are closed
every room handles what it has queued, closes its sockets with 1001 and ends, while hypercorn
lets the other connections finish. All of it within SHUTDOWN_GRACE_SECONDS: past that deadline
whatever is left is cancelled, the events whose rooms were still running are logged, and
`serve` raises ShutdownTimedOut so the process exits non-zero. A room stuck where cancellation
cannot reach it (a store call in a worker thread that never returns) cannot hold the process
either: a watchdog thread ends it shortly after the deadline.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from vpiska import transport
from vpiska.actors import EventSupervisor
from vpiska.actors.geo import MapIndex
from vpiska.actors.rooms import Rooms
from vpiska.app import Services, create_app
from vpiska.cluster import redis
from vpiska.cluster.bus import Bus
from vpiska.cluster.map_notices import MapNotices
from vpiska.cluster.node import ClusterNode
from vpiska.cluster.signin_counters import RedisCounters
from vpiska.config import Config
from vpiska.http import websocket
from vpiska.low_priority_threads import open_low_priority_threads
from vpiska.media_sweep import serve_media_sweep
from vpiska.signin_limits import LocalCounters, SigninCounters
from vpiska.store import Store, open_store

log = logging.getLogger(__name__)

# Collections of the middle generation between two full collections (Python's default: 10).
FULL_COLLECTION_AFTER = 100

# How long past the shutdown deadline the watchdog waits for the cancelled tasks to unwind
# before it ends the process itself.
WATCHDOG_MARGIN_SECONDS = 2.0
EXIT_SHUTDOWN_TIMED_OUT = 3


class ShutdownTimedOut(Exception):
    """Draining did not finish within SHUTDOWN_GRACE_SECONDS; `events` were still open."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(f"{len(events)} event room(s) abandoned")
        self.events = events


class ListenError(Exception):
    """The server could not listen on its address (in use, not ours, …)."""


async def serve(
    config: Config,
    *,
    store: Store | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown_trigger` returns (default: SIGINT or SIGTERM), then shut down.

    `task_status.started` gets the bound addresses, e.g. ["http://127.0.0.1:5000"], once the
    listening socket accepts connections. `store`, when given, is used instead of the one the
    configuration names, and stays open: its owner closes it.

    Error handling: ListenError before anything starts if the address cannot be had;
    ShutdownTimedOut after a shutdown that ran past its deadline.
    """
    adapted = transport.install(enabled=config.hypercorn_adapter)
    hypercorn_config = _hypercorn_config(config)
    sockets = _listen(hypercorn_config, config)
    deadline_passed = _DeadlinePassed()
    try:
        await _serve(config, store, hypercorn_config, sockets, adapted, deadline_passed,
                     shutdown_trigger, task_status)
    finally:
        deadline_passed.disarm()
        for sock in sockets.insecure_sockets:
            sock.close()  # hypercorn's if it started; ours if it never did
    if deadline_passed.events is not None:
        raise ShutdownTimedOut(deadline_passed.events)
    log.info("stopped")


async def _serve(
    config: Config,
    store: Store | None,
    hypercorn_config: HypercornConfig,
    sockets: Sockets,
    adapted: bool,
    deadline_passed: _DeadlinePassed,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    async with (_store(config, store) as opened, _trigger(shutdown_trigger) as triggered,
                _live_events(config, opened) as (supervisor, node),
                _signin_counters(config) as signin_counters,
                open_low_priority_threads(config.password_hash_concurrency) as low_priority):
        rooms: Rooms = supervisor if node is None else node
        services = Services.build(config, opened, rooms, signin_counters, low_priority)
        if node is not None:
            node.known_users = services.accounts
        await services.accounts.know_users()
        app = wrap_app(create_app(services), hypercorn_config.wsgi_max_body_size, "asgi")
        stopping = trio.Event()

        async def stop_serving() -> None:
            await triggered()
            supervisor.refuse_new_events()  # at the signal, not once hypercorn stops accepting
            stopping.set()

        # The rooms' nursery is ours, outside hypercorn's: under hypercorn, tasks of quart-trio's
        # app.nursery are cancelled the moment serving ends; here they drain first. A cluster
        # node's own tasks (Redis, leases) outlive both: the rooms hand over through them.
        async with trio.open_nursery() as watchdog, trio.open_nursery() as cluster:
            cluster.start_soon(opened.maintain)
            cluster.start_soon(serve_media_sweep, opened, services.media.media_bytes)
            if node is not None:
                await cluster.start(node.run)
            async with trio.open_nursery() as rooms_nursery:
                await rooms_nursery.start(supervisor.run)
                _freeze_the_start()
                watchdog.start_soon(_freeze_the_rooms, supervisor)
                async with trio.open_nursery() as connections:
                    binds = await connections.start(partial(
                        worker_serve, app, hypercorn_config, sockets=sockets,
                        shutdown_trigger=stop_serving))
                    log.info("serving", extra={
                        "binds": binds, "store": config.store.kind,
                        "hypercorn_adapter": adapted,
                        "cluster_node": None if node is None else node.node_id})
                    task_status.started(binds)
                    await stopping.wait()
                    deadline = trio.current_time() + config.shutdown_grace_seconds
                    rooms_nursery.cancel_scope.deadline = deadline
                    connections.cancel_scope.deadline = deadline
                    watchdog.start_soon(deadline_passed.watch, deadline, supervisor)
                    await _closed(sockets)  # hypercorn stops accepting as the trigger returns
                    if node is None:
                        await supervisor.stop()
                    else:
                        await node.leave()
            cluster.cancel_scope.cancel()
            watchdog.cancel_scope.cancel()  # everything ended: nothing to watch any more


def _freeze_the_start() -> None:
    """Leave what start-up built (every open event's room, the map, the app) out of the
    cyclic garbage collector's full collections: they live as long as the process, and with
    10,000 open events a full collection walking them held requests up for hundreds of ms
    (p99 of events/get 700 ms against ~200 ms with one event; frozen: ~150-300 ms).

    Full collections also come ten times rarer than Python's default (FULL_COLLECTION_AFTER):
    while 5,000 members joined one room, the live heap grew by ~470,000 objects, and the
    default threshold ran five full collections of ~100 ms each over it, 18 % of the storm's
    CPU (measured with gc.callbacks). Young objects are collected as before; cyclic garbage
    that survives two young collections waits longer to be freed."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)
    log.info("start-up heap frozen", extra={"objects": gc.get_freeze_count()})


async def _freeze_the_rooms(supervisor: EventSupervisor) -> None:
    """Freeze again once every room of the start has its actor.

    The rooms start after the server listens (each reads its chat length from the store
    first). With 10,000 open events, once they had all started the youngest generation held
    ~170,000 objects while gc.get_count() said 14 (of 700): the next young collection, under
    load, took ~50 ms and the one after it ~75 ms, and events/get's p99 was ~100 ms against
    ~30 ms with one open event (measured with gc.callbacks). Frozen once the rooms are made,
    they are never scanned again. This collection itself takes ~100 ms, once, when the last
    room has started: before the first request, unless clients are already reconnecting."""
    await supervisor.started.wait()
    gc.collect()
    gc.freeze()
    log.info("rooms frozen", extra={"objects": gc.get_freeze_count()})


@asynccontextmanager
async def _live_events(config: Config, store: Store
                       ) -> AsyncIterator[tuple[EventSupervisor, ClusterNode | None]]:
    """The supervisor of this process's rooms and, with REDIS_URL, the cluster node around it,
    each made after what it needs: the rooms' actors tell the other nodes of their map changes
    through `map_notices`, and the node learns of a room's end as it activates it."""
    if config.redis_url is None:
        yield EventSupervisor(store, config), None
        return
    async with redis.connect(config.redis_url) as client:
        bus = Bus(config.redis_url, client)
        index = MapIndex()
        map_notices = MapNotices(bus)
        supervisor = EventSupervisor(store, config, serve_all=False, index=index,
                                     map_publisher=map_notices)
        yield supervisor, ClusterNode(config, store, supervisor, client, bus, index, map_notices)


@asynccontextmanager
async def _signin_counters(config: Config) -> AsyncIterator[SigninCounters | None]:
    """With REDIS_URL, the sign-in limits counted in Redis for the whole cluster, on a client
    of their own: a login storm waits behind no room's traffic, nor a room behind it."""
    if config.redis_url is None:
        yield None
        return
    async with redis.connect(config.redis_url) as client:
        yield RedisCounters(client, LocalCounters())


@asynccontextmanager
async def _trigger(given: Callable[[], Awaitable[None]] | None
                   ) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """What ends serving: `given`, or SIGINT/SIGTERM, caught from before the server listens
    (a signal between 'serving' and hypercorn's own start of the trigger would kill it)."""
    if given is not None:
        yield given
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async def signalled() -> None:
            async for signum in signals:
                log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                return

        yield signalled


@asynccontextmanager
async def _store(config: Config, given: Store | None) -> AsyncIterator[Store]:
    if given is not None:
        yield given
        return
    async with open_store(config) as store:
        yield store


async def _closed(sockets: Sockets) -> None:
    """Return once hypercorn has closed every listening socket.

    hypercorn closes them when its shutdown trigger returns, in a task of its own, and offers
    no hook for it; the sockets are ours (`_listen`), so their file descriptors tell.
    """
    while any(sock.fileno() != -1 for sock in sockets.insecure_sockets):  # noqa: ASYNC110
        await trio.sleep(0.001)


class _DeadlinePassed:
    """The shutdown's watchdog; `events` are the rooms it found still open at the deadline."""

    events: list[str] | None = None
    _timer: threading.Timer | None = None

    async def watch(self, deadline: float, supervisor: EventSupervisor) -> None:
        """At the deadline: log what is abandoned, and make sure the process ends.

        Rooms still running are a failed shutdown (their queued writes may be lost). Only
        connections still open (a client that keeps its request going, hypercorn's own
        lingering sockets) are cut, as hypercorn's graceful timeout means to.
        """
        await trio.sleep_until(deadline)
        if not supervisor.event_ids:
            log.warning("shutdown deadline passed; closing the connections still open")
            return
        self.events = supervisor.event_ids
        log.error("shutdown deadline passed; abandoning event rooms still draining",
                  extra={"events": self.events})
        self._timer = threading.Timer(WATCHDOG_MARGIN_SECONDS, _exit_stuck)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        """`serve` is returning after all: the process need not be ended for it."""
        if self._timer is not None:
            self._timer.cancel()


def _exit_stuck() -> None:
    log.critical("shutdown stuck past its deadline (a store call that never returns?); exiting")
    logging.shutdown()
    os._exit(EXIT_SHUTDOWN_TIMED_OUT)


def _listen(hypercorn_config: HypercornConfig, config: Config) -> Sockets:
    """The listening socket, made here rather than by hypercorn: its closing tells when
    hypercorn stops accepting (`_closed`), and with REUSE_PORT several nodes share it."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((config.host, config.port))
        sock.listen(hypercorn_config.backlog)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise ListenError(
            f"cannot listen on {config.host}:{config.port}: {error.strerror or error}"
        ) from None
    return Sockets([], [sock], [])


def _hypercorn_config(config: Config) -> HypercornConfig:
    hc = transport.ServerConfig()
    hc.body_timeout = config.body_timeout_seconds
    hc.bind = [f"{config.host}:{config.port}"]
    hc.graceful_timeout = config.shutdown_grace_seconds
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.websocket_max_message_size = config.ws_max_frame_bytes
    if config.direct_websockets:
        hc.direct_websocket_paths = frozenset({websocket.PATH.encode()})
    hc.max_pending_handshakes = config.max_pending_handshakes or None
    hc.websocket_ping_interval = config.ws_ping_seconds
    # A live peer answers every ping, so something is read at least once per interval; a peer
    # silent for two intervals is gone (hypercorn sends pings but leaves timing out to us).
    # (The ignore: hypercorn's Config says int, but it takes seconds as a float like the rest.)
    hc.read_timeout = 2 * config.ws_ping_seconds  # type: ignore[assignment]
    return hc
