"""GET /crm-events (the live SSE stream) and GET /ops/crm-events (the Command Center page).

Bad input is answered 400 problem+json before the stream opens. Load is never answered with 429
or 503: a browser's EventSource gives up for good on any non-200, so an overloaded or not-yet-ready
process accepts the request, sends a `retry:` hint and closes, and the browser comes back later.
"""
from __future__ import annotations

import random
import re
import uuid
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.responses import Response

from api.stream.cursor import Cursor, CursorError, decode, parse_since
from api.problems import Problem
from api.stream.records import Filter
from api.stream.session import SSE_HEADERS, SseSession

router = APIRouter(tags=["stream"])

PAGE = Path(__file__).resolve().parent.parent / "static" / "crm-events.html"
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
MAX_TYPES = 32


def _bad(detail: str, param: str) -> Problem:
    return Problem(400, "Invalid stream request", detail, type_="https://aether.dev/problems/invalid-stream-request",
                   param=param)


def parse_filter(types: str | None, tenant: str | None) -> Filter:
    type_set = None
    if types is not None:
        names = [t.strip() for t in types.split(",") if t.strip()]
        if not names or len(names) > MAX_TYPES or not all(_TYPE.fullmatch(t) for t in names):
            raise _bad(f"types must be 1 to {MAX_TYPES} comma-separated event type names, e.g. JobCreated,JobUpdated",
                       "types")
        type_set = frozenset(names)
    tenant_id = None
    if tenant is not None:
        try:
            tenant_id = str(uuid.UUID(tenant))
        except ValueError:
            raise _bad("tenant must be a UUID", "tenant") from None
    return Filter(type_set, tenant_id)


def _cors_headers(request: Request) -> list[tuple[bytes, bytes]]:
    allowed = [o.strip() for o in request.app.state.settings.sse_cors_origins.split(",") if o.strip()]
    origin = request.headers.get("origin")
    if "*" in allowed:
        return [(b"access-control-allow-origin", b"*")]
    if origin and origin in allowed:
        return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
    return []


def _come_back_later(request: Request, reason: str) -> Response:
    """A complete, valid stream that only says when to reconnect; jittered so that a crowd sent
    away together does not return together."""
    ms = int(request.app.state.settings.sse_retry_ms * random.uniform(1.0, 2.5))
    body = f"retry: {ms}\n: {reason}\n\n".encode()
    headers = {k.decode(): v.decode() for k, v in SSE_HEADERS + _cors_headers(request) if k != b"content-type"}
    return Response(body, media_type="text/event-stream", headers=headers)


@router.get(
    "/crm-events",
    summary="Live domain events (Server-Sent Events), resumable without gap or duplicate",
    description=(
        "Every record of the events topic as `data: {\"kind\":\"domain_event\",\"topic\",\"partition\",\"offset\","
        "\"timestamp\",\"key\",\"value\"}` with an `id:` resume cursor. Start point: `Last-Event-ID` header, else "
        "`cursor`, else `since` (epoch ms or ISO-8601), else now. Offsets no longer retained are announced with "
        "`event: reset`."),
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}}}, 400: {"content": {"application/problem+json": {}}}},
)
async def crm_events(request: Request, cursor: str | None = None, since: str | None = None,
                     types: str | None = None, tenant: str | None = None):
    flt = parse_filter(types, tenant)
    resume: Cursor | None = None
    since_ms: int | None = None
    last_event_id = request.headers.get("last-event-id", "").strip()
    try:
        if last_event_id:
            resume = decode(last_event_id)
        elif cursor is not None:
            resume = decode(cursor)
    except CursorError as exc:
        raise _bad(str(exc), "Last-Event-ID" if last_event_id else "cursor") from None
    if resume is None and since is not None:
        try:
            since_ms = parse_since(since)
        except ValueError as exc:
            raise _bad(str(exc), "since") from None

    hub = getattr(request.app.state, "stream_hub", None)
    if hub is None or not hub.ready:
        return _come_back_later(request, "event stream not connected to Kafka yet")
    if hub.stopping.is_set():
        return _come_back_later(request, "server restarting")
    if len(hub.clients) >= request.app.state.settings.sse_max_clients:
        return _come_back_later(request, "server at its client limit")
    try:
        start = await hub.resolve(resume, since_ms)
    except CursorError as exc:
        raise _bad(str(exc), "Last-Event-ID" if last_event_id else "cursor") from None
    return SseSession(hub, start, flt, _cors_headers(request))


@router.options("/crm-events", include_in_schema=False)
async def crm_events_preflight(request: Request) -> Response:
    headers = {k.decode(): v.decode() for k, v in _cors_headers(request)}
    if headers:
        headers.update({"Access-Control-Allow-Methods": "GET", "Access-Control-Allow-Headers": "Last-Event-ID",
                        "Access-Control-Max-Age": "600"})
    return Response(status_code=204, headers=headers)


@router.get("/ops/crm-events", summary="Command Center: the live event stream in a browser",
            response_class=HTMLResponse)
async def command_center() -> HTMLResponse:
    return HTMLResponse(PAGE.read_bytes(), headers={"Cache-Control": "no-cache"})
