"""`GET /healthz` and `GET /readyz`: what an orchestrator asks before routing traffic here.

`GET /health` is the older backend's check, kept for the deployments that point at it: 200
with an empty body (no content type: there is no content), whatever the store is doing.

Liveness says only that the process serves requests, so a slow database never gets a healthy
process restarted. Readiness says the store answers a ping within READY_TIMEOUT_SECONDS, and in
a cluster that Redis answered the node's last heartbeat; if not, 503, and the load balancer
sends clients elsewhere until it does.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from quart import Blueprint, Response
from quart_trio import QuartTrio

from vpiska.actors.rooms import Rooms
from vpiska.errors import ErrorCode
from vpiska.http.envelope import failure, success
from vpiska.store import Store

log = logging.getLogger(__name__)


class StorePing:
    """One ping of the store in flight at a time, shared by every probe that asks meanwhile.

    A store call runs in a worker thread that cannot be cancelled, so the deadline is kept by
    waiting for the ping, not by cancelling it: a hung database leaves one ping waiting, not
    one per probe.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._in_flight: _Ping | None = None

    async def answers_within(self, seconds: float, nursery: trio.Nursery) -> bool:
        if self._in_flight is None:
            self._in_flight = _Ping()
            nursery.start_soon(self._ping, self._in_flight)
        ping = self._in_flight
        with trio.move_on_after(seconds):
            await ping.done.wait()
            if ping.failure is None:
                return True
            log.warning("store not ready", extra={"cause": repr(ping.failure)})
            return False
        log.warning("store not ready", extra={"cause": f"no answer within {seconds} s"})
        return False

    async def _ping(self, ping: _Ping) -> None:
        try:
            await self._store.ping()
        except Exception as failed:  # any driver error: the store is not usable
            ping.failure = failed
        finally:
            self._in_flight = None
            ping.done.set()


class _Ping:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.failure: Exception | None = None


def probe_routes(app: QuartTrio, store: Store, rooms: Rooms, ready_timeout: float) -> Blueprint:
    routes = Blueprint("probes", __name__)
    ping = StorePing(store)

    @routes.get("/health")
    async def health() -> Any:
        response = Response(b"", status=200)
        del response.headers["Content-Type"]
        return response

    @routes.get("/healthz")
    async def alive() -> Any:
        return success({"status": "alive"})

    @routes.get("/readyz")
    async def ready() -> Any:
        if not rooms.ready:  # the node logs the outage itself, once
            return failure(ErrorCode.INTERNAL_ERROR, status=503)
        if await ping.answers_within(ready_timeout, app.nursery):
            return success({"status": "ready"})
        return failure(ErrorCode.INTERNAL_ERROR, status=503)

    return routes
