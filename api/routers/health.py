"""Health, for people and for orchestrators. One definition of each check, used by all three:

- `GET /`: the seed's health JSON. `ok` needs both the database and Kafka; otherwise 503. For
  people and dashboards: it says what is away.
- `GET /livez`: 200 whenever the process can serve HTTP at all; no I/O. For liveness probes: a
  restart is the cure only for a process that cannot answer, never for a server it depends on.
- `GET /readyz`: 503 only when this process cannot do its job: the database is unreachable (no
  read or write can succeed), or the stream consumer is not running (stopped, or shutting down,
  so /crm-events would serve nothing new). Kafka being away is reported but stays ready: creates
  never touch Kafka (the outbox holds events until the relay publishes them), and the stream
  consumer keeps reconnecting by itself. For readiness probes and load balancers.
"""
from __future__ import annotations

import asyncio
from typing import Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

router = APIRouter(tags=["health"])

_JSON = "application/json"
_ALIVE = orjson.dumps({"status": "alive"})


class Liveness(BaseModel):
    status: Literal["alive"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    database: Literal["ok", "unreachable"]
    kafka: Literal["ok", "unreachable"]
    stream_consumer: Literal["running", "stopped"]


@router.get("/", summary="Health: database and Kafka reachability")
async def health(request: Request) -> Response:
    state = request.app.state
    db_ok, kafka_ok = await _reachability(state)
    body = {
        "service": "aether-api",
        "status": "ok" if db_ok and kafka_ok else "degraded",
        "kafka_brokers": state.settings.kafka_bootstrap_servers,
        "topic": state.settings.topic,
        "group": state.settings.stream_group,
        "database": "ok" if db_ok else "unreachable",
        "kafka": "ok" if kafka_ok else "unreachable",
    }
    hub = getattr(state, "stream_hub", None)
    if hub is not None:
        body.update(hub.health())
    return Response(orjson.dumps(body), status_code=200 if body["status"] == "ok" else 503, media_type=_JSON)


@router.get("/livez", summary="Liveness: the process serves HTTP", response_model=Liveness,
            description="Always 200 while the process can answer; checks no dependency. Use it for liveness "
                        "probes: a database or Kafka outage must not restart API processes.")
async def livez() -> Response:
    return Response(_ALIVE, media_type=_JSON)


@router.get("/readyz", summary="Readiness: the database is reachable and the stream consumer runs",
            response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Not ready: the database is unreachable or the "
                                                               "stream consumer is not running."}},
            description="503 only when the database is unreachable or the stream consumer is not running (stopped, "
                        "or the process is shutting down). Kafka being unreachable is reported in `kafka` and keeps "
                        "the process ready: creates never touch Kafka, and the consumer reconnects by itself.")
async def readyz(request: Request) -> Response:
    state = request.app.state
    db_ok, kafka_ok = await _reachability(state)
    consumer_running = _stream_consumer_running(state)
    ready = db_ok and consumer_running
    body = {"status": "ready" if ready else "not_ready",
            "database": "ok" if db_ok else "unreachable",
            "kafka": "ok" if kafka_ok else "unreachable",
            "stream_consumer": "running" if consumer_running else "stopped"}
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type=_JSON)


async def _reachability(state) -> tuple[bool, bool]:
    """(database, Kafka), checked concurrently: a probe waits for the slower one only."""
    db_ok, kafka_ok = await asyncio.gather(_db_ok(state.pool), state.kafka_probe.reachable())
    return db_ok, kafka_ok


async def _db_ok(pool) -> bool:
    try:
        async with pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


def _stream_consumer_running(state) -> bool:
    hub = getattr(state, "stream_hub", None)
    return hub is not None and hub.consumer_running
