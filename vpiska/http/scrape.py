"""`GET /metrics` for Prometheus, and the per-request counts and latencies it reports.

Requests are labelled by route template (`/api/v1/media/<media_id>`), never by raw path, so
ids and fuzzed paths cannot grow the label set: a path no route serves is `unmatched`.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from quart import Blueprint, Quart, Response, g, request

from vpiska import metrics

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def metrics_routes(registry: CollectorRegistry) -> Blueprint:
    routes = Blueprint("metrics", __name__)

    @routes.get("/metrics")
    async def scrape() -> Any:
        # On the trio thread, not in a worker: the room collectors read live member tables.
        # Text format 0.0.4: every Prometheus version reads it.
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)

    return routes


def count_requests(app: Quart) -> None:
    @app.before_request
    async def start_clock() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    async def count(response: Response) -> Response:
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        metrics.HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        metrics.HTTP_DURATION.labels(route, method).observe(
            time.perf_counter() - g.metrics_started)
        return response
