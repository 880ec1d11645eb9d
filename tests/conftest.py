"""A real vpiska server per test: hypercorn on 127.0.0.1, an ephemeral port, a fresh store file.

The test holds the store the server runs on (`Server.store`), so it can put users in directly
(argon2 sign-ups are slow) and, through `wrap_store`, serve on a store that fails on purpose.
"""

from __future__ import annotations

import json
import logging
import resource
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.helpers.clients import Crowd
from tests.helpers.server import CLIENT_LIMITS, Server, make_config
from vpiska.logs import JsonFormatter
from vpiska.server import serve
from vpiska.store import Store, open_store

pytest_plugins = [
    "tests.helpers.mongodb_fixtures",  # mongodb_url (first: cluster_fixtures imports it)
    "tests.helpers.cluster_fixtures",  # redis_server, cluster, machines, tcp_proxy
    "tests.helpers.sentinel_fixtures",  # redis_sentinels
]


def _raise_open_file_limit() -> None:
    """The crowd tests hold a few thousand sockets (both ends in this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


_raise_open_file_limit()


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Override in a test module to start its servers with other settings."""
    return {}


@pytest.fixture
def write_path() -> str:
    return "adapted"


@pytest.fixture
def wrap_store() -> Callable[[Store], Store]:
    """Override in a test module to serve on a wrapper of the real store
    (tests/helpers/fakes.py)."""
    return lambda store: store


@pytest.fixture
async def server(
    tmp_path: Path, config_overrides: dict[str, Any], write_path: str,
    wrap_store: Callable[[Store], Store],
) -> AsyncIterator[Server]:
    config = make_config(tmp_path, **{"hypercorn_adapter": write_path != "stock-hypercorn",
                                      "direct_websockets": write_path == "adapted",
                                      **config_overrides})
    # sqlite unless the module's config_overrides name another store (MongoDB: `mongo_config`).
    async with open_store(config) as store:
        served = wrap_store(store)
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            binds = await nursery.start(
                partial(serve, config, store=served, shutdown_trigger=stop.wait))
            async with httpx.AsyncClient(base_url=binds[0], timeout=30,
                                         limits=CLIENT_LIMITS) as http:
                yield Server(binds[0], config, http, served)
            stop.set()
            if not config.hypercorn_adapter:
                # Stock hypercorn keeps idle and closed sockets open (docs/transport.md), so
                # its graceful shutdown would take the whole grace period: cut it short.
                nursery.cancel_scope.cancel()


@pytest.fixture
async def crowd(nursery: trio.Nursery, server: Server) -> AsyncIterator[Any]:
    """WebSocket members of the test's event rooms, all closed when the test ends."""

    members = Crowd(nursery, server)
    yield members
    await members.aclose()


class JsonLines(logging.Handler):
    """The lines vpiska's formatter writes, kept in memory (formatted as they are logged,
    while the request's context is current)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    handler = JsonLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler.lines
    root.removeHandler(handler)
    root.setLevel(level)


