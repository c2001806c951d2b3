"""GET /: the seed's health JSON. `ok` needs both the database and Kafka; otherwise 503."""
from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

router = APIRouter(tags=["health"])


@router.get("/", summary="Health: database and Kafka reachability")
async def health(request: Request) -> Response:
    state = request.app.state
    db_ok = await _db_ok(state.pool)
    kafka_ok = await state.kafka_probe.reachable()
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
    return Response(orjson.dumps(body), status_code=200 if body["status"] == "ok" else 503,
                    media_type="application/json")


async def _db_ok(pool) -> bool:
    try:
        async with pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False
