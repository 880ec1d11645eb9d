"""A real vpiska server per test: hypercorn on 127.0.0.1, an ephemeral port, a fresh store file.

The test holds the store the server runs on (`Server.store`), so it can put users in directly
(argon2 sign-ups are slow) and, through `wrap_store`, serve on a store that fails on purpose.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from vpiska.config import Config, StoreLocation
from vpiska.logs import JsonFormatter
from vpiska.server import serve
from vpiska.store import Store, open_store

pytest_plugins = [
    "tests.mongodb_fixtures",  # mongodb_url (first: cluster_fixtures imports it)
    "tests.cluster_fixtures",  # redis_server, cluster, machines, tcp_proxy
    "tests.sentinel_fixtures",  # redis_sentinels
]


def _raise_open_file_limit() -> None:
    """The crowd tests hold a few thousand sockets (both ends in this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


_raise_open_file_limit()


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "store": StoreLocation("sqlite", str(tmp_path / "vpiska.db")),
        "media_path": tmp_path / "media",
    }
    return Config(**(settings | overrides))


@dataclasses.dataclass
class Server:
    url: str
    config: Config
    http: httpx.AsyncClient
    store: Store  # the store the server runs on

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    async def call(self, path: str, body: Any = None, *, token: str | None = None,
                   **kwargs: Any) -> dict[str, Any]:
        """POST a JSON body (or the given content) and return the envelope, checking its form."""
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            kwargs["json"] = body
        response = await self.http.post(path, headers=headers, **kwargs)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        envelope: dict[str, Any] = response.json()
        assert list(envelope) == ["isSuccess", "errors", "result"]
        return envelope

    async def ok(self, path: str, body: Any = None, *, token: str | None = None,
                 **kwargs: Any) -> Any:
        envelope = await self.call(path, body, token=token, **kwargs)
        assert envelope["isSuccess"] is True, envelope
        assert envelope["errors"] is None
        return envelope["result"]

    async def codes(self, path: str, body: Any = None, *, token: str | None = None,
                    **kwargs: Any) -> list[str]:
        envelope = await self.call(path, body, token=token, **kwargs)
        assert envelope["isSuccess"] is False, envelope
        assert envelope["result"] is None
        return [error["errorCode"] for error in envelope["errors"]]

    async def sign_up(self, name: str = "ann", phone: str = "9001234567",
                      password: str = "secret1") -> dict[str, Any]:
        result: dict[str, Any] = await self.ok(
            "/api/v1/users/create",
            {"name": name, "phone": phone, "password": password, "confirmPassword": password},
        )
        return result


# A test client drops an idle connection after 1 s: the server closes idle ones after
# hypercorn's keep_alive_timeout (5 s) or two ping intervals (4 s with the shortest the tests
# use), and a client reusing one as the server closes it gets no response. httpx's own default
# (5 s) left the two timers racing.
CLIENT_LIMITS = httpx.Limits(keepalive_expiry=1.0)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Override in a test module to start its servers with other settings."""
    return {}


# The live-room modules run every test on both write paths: hypercorn with vpiska's adapter
# (direct socket writes) and plain hypercorn (ASGI sends), which serves when the adapter does
# not fit the installed hypercorn.
BOTH_WRITE_PATHS = pytest.mark.parametrize("write_path", ["adapted", "stock-hypercorn"])
# The WebSocket modules also run the adapter's path through hypercorn's own protocol, which
# serves the handshakes direct_websocket.py leaves to h11 (and every one without
# DIRECT_WEBSOCKETS).
EVERY_WEBSOCKET_PATH = pytest.mark.parametrize(
    "write_path", ["adapted", "adapted-h11", "stock-hypercorn"])


def stock_hypercorn_fails(bug: str, *, every_run: bool = True) -> pytest.MarkDecorator:
    """EVERY_WEBSOCKET_PATH, with the stock-hypercorn case expected to fail because of `bug`, a
    defect of hypercorn 0.18 that vpiska/transport/ fixes (docs/transport.md lists them).

    Strict: once a hypercorn release fixes it, the case passes and the suite says so. A bug
    that is a race stock hypercorn loses on some runs only (`every_run=False`) cannot be held
    to that: its case may pass, and the reason says so."""
    reason = f"hypercorn 0.18: {bug}" + ("" if every_run else " (a race: some runs only)")
    return pytest.mark.parametrize("write_path", [
        "adapted", "adapted-h11",
        pytest.param("stock-hypercorn",
                     marks=pytest.mark.xfail(strict=every_run, reason=reason))])


@pytest.fixture
def write_path() -> str:
    return "adapted"


@pytest.fixture
def wrap_store() -> Callable[[Store], Store]:
    """Override in a test module to serve on a wrapper of the real store (tests/fakes.py)."""
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
    from tests.clients import Crowd

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


class MockSocket:
    """What hypercorn's TCPServer asks of a connection's socket (its family and addresses), for
    a connection over trio.testing.memory_stream_pair, as hypercorn's own tests/helpers.py."""

    family = socket.AF_INET

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 50000)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 5000)
