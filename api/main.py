"""The FastAPI application: wiring only. Each concern lives in its own module."""
from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from aether_platform.kafka_client import client_config
from aether_platform.settings import get_settings
from api import docs, doorbell, problems
from api.db import make_pool, make_statement_pool
from api.fast_create import FastCreate
from api.kafka_health import KafkaProbe
from api.stream import lifecycle as stream_lifecycle
from api.limits import RequestLimits
from api.metrics import install as install_metrics
from api.routers import crm_events
from api.routers import health, resources
from api.request_context import RequestContext
from api.security import Authentication
from aether_platform import auth, logs
from api.rate_limit import TenantRateLimiter

log = logging.getLogger("aether.api")
GC_YOUNG_THRESHOLD = 5_000


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = app.state.settings
    pool = make_pool(settings)
    await pool.open(wait=False)
    app.state.pool = pool
    statements = make_statement_pool(settings)
    await statements.open()
    app.state.statements = statements
    app.state.kafka_probe = KafkaProbe(client_config(settings=settings))
    await stream_lifecycle.start(app)
    await doorbell.start(app)
    # Everything built so far (modules, FastAPI's routes, pydantic's validators) lives as long
    # as the process; frozen, the cyclic GC stops re-scanning it. Without this a full
    # collection stalled every in-flight request for ~150 ms under load (measured).
    gc.freeze()
    # A young collection runs after 700 net new objects by default, which the live state of a
    # few dozen in-flight requests reaches on its own: under load it ran every ~50 creates and
    # scanned (and promoted) those requests each time, about 3 % of the API's CPU. From 2,000
    # up, collections fell 8-20x and their time from 0.40 s to 0.05 s per 40,000 creates
    # (measured); nearly everything a request allocates is freed by reference counting anyway.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    try:
        yield
    finally:
        await doorbell.stop(app)
        await stream_lifecycle.stop(app)
        await asyncio.wait_for(statements.close(), timeout=5)
        await asyncio.wait_for(pool.close(), timeout=5)


def create_app() -> FastAPI:
    # Before anything logs: AETHER_LOG_FORMAT / AETHER_LOG_LEVEL, uvicorn's loggers included.
    logs.configure()
    settings = get_settings()
    app = FastAPI(
        title="Aether CRM API",
        version="0.1.0",
        summary="Accounts, contacts and jobs; every write commits its outbox event in the same transaction.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # api.docs serves /docs from the app itself
        # FastAPI's built-in OpenTelemetry hooks default to on and, with no provider configured,
        # still build spans and attributes on every request; /metrics is our telemetry.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.write_limiter = TenantRateLimiter(settings.write_rate_per_tenant, settings.write_burst_per_tenant)
    # Every middleware must be a plain ASGI class whose `send` path needs no current task: the
    # stream hub writes a parked /crm-events client's frames by driving its ASGI `send` from a loop
    # callback, outside any task (api.stream.session.send_now). No BaseHTTPMiddleware, and no
    # asyncio.timeout() or task-local state around `send` (tests/stream/test_send_now.py checks).
    # Middlewares wrap in reverse order of addition: the request context outermost, then metrics
    # (it counts 401s, 413s and 500s too), then the 500 safety net, then authentication, then the
    # request limits, and innermost, just before routing, the create endpoints' fast path.
    if settings.api_fast_create:
        app.add_middleware(FastCreate)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes,
                       max_header_bytes=settings.max_header_bytes, max_json_depth=settings.max_json_depth)
    app.add_middleware(Authentication, authenticator=auth.from_settings(settings),
                       protect_metrics=settings.auth_protect_metrics, protect_ops=settings.auth_protect_ops,
                       tickets=auth.tickets_from_settings(settings))
    problems.install(app)
    install_metrics(app)
    # Added last, so outermost: the request id and tenant are bound for every line below it.
    app.add_middleware(RequestContext)
    app.include_router(health.router)
    app.include_router(crm_events.router)
    for router in resources.ROUTERS:
        app.include_router(router)
    docs.install(app, settings)
    return app


app = create_app()
