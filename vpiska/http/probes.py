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
from vpiska.store.health import StorePing

log = logging.getLogger(__name__)


async def store_ready(pings: StorePing, seconds: float, nursery: trio.Nursery) -> bool:
    """Whether the store answers a ping (the one in flight, if any) within `seconds`; a
    warning naming the cause when not."""
    ping = pings.start(nursery)
    with trio.move_on_after(seconds):
        await ping.done.wait()
        if ping.failure is None:
            return True
        log.warning("store not ready", extra={"cause": repr(ping.failure)})
        return False
    log.warning("store not ready", extra={"cause": f"no answer within {seconds} s"})
    return False


def probe_routes(app: QuartTrio, store: Store, rooms: Rooms, ready_timeout: float) -> Blueprint:
    routes = Blueprint("probes", __name__)
    pings = StorePing(store)

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
        if await store_ready(pings, ready_timeout, app.nursery):
            return success({"status": "ready"})
        return failure(ErrorCode.INTERNAL_ERROR, status=503)

    return routes
