"""`/healthz` answers while the process serves; `/readyz` only while the store answers in time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from quart import typing as quart_types

from tests.helpers.server import Server, make_config
from vpiska.actors import EventSupervisor
from vpiska.app import Services, create_quart_app
from vpiska.store import Store, open_store

READY_TIMEOUT = 2.0


async def test_healthz_says_alive(server: Server) -> None:
    response = await server.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"isSuccess": True, "errors": None, "result": {"status": "alive"}}


async def test_readyz_says_ready_when_the_store_answers(server: Server) -> None:
    response = await server.http.get("/readyz")
    assert response.status_code == 200
    assert response.json()["result"] == {"status": "ready"}


class PingingStore:
    """A real store whose `ping` is replaced, as a database that hangs or fails would."""

    def __init__(self, store: Store, ping: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._store = store
        self.ping = ping

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@asynccontextmanager
async def client_of(tmp_path: Path, ping: Callable[[], Coroutine[Any, Any, None]]
                    ) -> AsyncIterator[quart_types.TestClientProtocol]:
    config = make_config(tmp_path, ready_timeout_seconds=READY_TIMEOUT)
    async with open_store(config) as real:
        store = PingingStore(real, ping)
        app = create_quart_app(Services.build(config, store, EventSupervisor(store, config)))
        async with app.test_app() as running:
            yield running.test_client()


async def test_readyz_is_503_when_the_store_hangs(tmp_path: Path, autojump_clock: Any) -> None:
    pings = 0

    async def hang() -> None:
        nonlocal pings
        pings += 1
        await trio.sleep_forever()

    async with client_of(tmp_path, hang) as client:
        started = trio.current_time()
        first = await client.get("/readyz")
        assert trio.current_time() - started == pytest.approx(READY_TIMEOUT)
        second = await client.get("/readyz")
        alive = await client.get("/healthz")
    assert first.status_code == second.status_code == 503
    assert (await first.get_json())["errors"] == [{"errorCode": "InternalError"}]
    assert pings == 1  # the hung ping is waited for again, not piled up
    assert alive.status_code == 200


async def test_readyz_is_503_when_the_store_fails_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail() -> None:
        raise ConnectionError("connection refused")

    with caplog.at_level(logging.WARNING):
        async with client_of(tmp_path, fail) as client:
            response = await client.get("/readyz")
    assert response.status_code == 503
    causes = [getattr(r, "cause", "") for r in caplog.records if r.message == "store not ready"]
    assert causes == ["ConnectionError('connection refused')"]


async def test_readyz_recovers_when_the_store_does(tmp_path: Path) -> None:
    down = True

    async def flaky() -> None:
        if down:
            raise ConnectionError("down")

    async with client_of(tmp_path, flaky) as client:
        assert (await client.get("/readyz")).status_code == 503
        down = False
        assert (await client.get("/readyz")).status_code == 200
