"""/metrics in Prometheus text format, with request counters and latency histograms. The names the
SLOs read are the SLO spec's (aether_platform.slo_spec), so a rename cannot break an alert silently.

uvicorn runs several worker processes; prometheus_client's multiprocess mode aggregates them
when PROMETHEUS_MULTIPROC_DIR is set (the stack sets it), otherwise each process reports alone.
"""
from __future__ import annotations

import os
import time

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.responses import Response

from aether_platform import slo_spec as names
from aether_platform.aggregates import AGGREGATES
from api import outbox_metrics

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

HTTP_REQUESTS = Counter(names.HTTP_REQUESTS, "HTTP requests by route template, method and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("aether_http_request_duration_seconds", "HTTP request latency by route template",
                         ["route", "method"], buckets=LATENCY_BUCKETS)
# Claim to commit of the write transaction (business row + idempotency record + outbox event):
# the SLO's "write latency".
OUTBOX_WRITE_SECONDS = Histogram(names.OUTBOX_WRITE_DURATION,
                                 "Time to commit a write with its outbox event, by aggregate", ["aggregate"],
                                 buckets=LATENCY_BUCKETS)
# Series exist from the start, so an idle API reports zero writes instead of an absent metric;
# kept by aggregate, so that a write does not go through labels() (a lock and a key) each time.
OUTBOX_WRITE_BY_AGGREGATE = {a.name: OUTBOX_WRITE_SECONDS.labels(a.name) for a in AGGREGATES}
IDEMPOTENCY_REPLAYS = Counter("aether_idempotency_replays_total", "Responses replayed for a reused Idempotency-Key")
IDEMPOTENCY_CONFLICTS = Counter("aether_idempotency_conflicts_total",
                                "Idempotency-Key conflicts: in_flight (409) or mismatch (422)", ["reason"])
for _reason in ("in_flight", "mismatch"):
    IDEMPOTENCY_CONFLICTS.labels(_reason)


def _registry() -> CollectorRegistry:
    from prometheus_client import REGISTRY

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


class MetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware): no per-request task, and streaming responses such as
    SSE pass through untouched. A stream is counted when it ends."""

    def __init__(self, app):
        self.app = app
        # labels() takes a lock and builds its key on every call; the set of (route, method,
        # status) is small and fixed by the routes, so each pair of series is looked up once.
        self._series: dict[tuple[str, str, int], tuple] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def _send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            key = (template, scope["method"], status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (HTTP_REQUESTS.labels(template, key[1], str(status)),
                                              HTTP_LATENCY.labels(template, key[1]))
            series[0].inc()
            series[1].observe(time.perf_counter() - start)


def install(app: FastAPI) -> None:
    app.add_middleware(MetricsMiddleware)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # Relay and outbox figures live in PostgreSQL (the relay runs in Dagster runs); they are
        # read per scrape and appended as their own exposition, in either registry mode.
        snapshot = await outbox_metrics.scrape(getattr(request.app.state, "pool", None))
        body = generate_latest(_registry()) + outbox_metrics.exposition(snapshot)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
