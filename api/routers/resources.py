"""The CRM resources: one router per aggregate, all built by `resource_router` so that accounts,
contacts and jobs share one tested implementation of create, read, list, patch and delete."""

import math
import uuid
from datetime import timedelta
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from aether_platform import crm, idempotency
from aether_platform.aggregates import AGGREGATES, AggregateSpec
from aether_platform.idempotency import IdempotentRequest, Verdict
from api import schemas
from api.db import checkout
from api.deps import idempotency_key, tenant_id, traceparent
from api.fast_create import FastCreateRoute
from api.metrics import IDEMPOTENCY_CONFLICTS, IDEMPOTENCY_REPLAYS, OUTBOX_WRITE_BY_AGGREGATE
from api.problems import Problem, problem_response

PROBLEM = {"model": schemas.ProblemOut, "content": {"application/problem+json": {}}}
# Every status the API can answer, documented so that clients (and the fuzzer) can rely on it.
_COMMON = {400: PROBLEM, 401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 422: PROBLEM, 431: PROBLEM, 500: PROBLEM,
           503: PROBLEM}
WRITE_ERRORS = {**_COMMON, 409: PROBLEM, 413: PROBLEM, 429: PROBLEM}
READ_ERRORS = dict(_COMMON)

Tenant = Annotated[uuid.UUID, Depends(tenant_id)]
Key = Annotated[str, Depends(idempotency_key)]
Trace = Annotated[str | None, Depends(traceparent)]


async def run_write(request: Request, tenant: uuid.UUID, key: str, command: crm.Command, status_code: int,
                    aggregate: str, location=None) -> Response:
    """One write, from the rate limit to the answer."""
    state, method, path = request.app.state, request.method, request.scope["path"]
    wait = state.write_limiter.acquire(tenant)
    if wait:
        return problem_response(429, "Too Many Requests", "This tenant's write rate is over its limit; retry later.",
                                instance=path, headers={"Retry-After": str(max(1, math.ceil(wait)))})
    req = IdempotentRequest(
        tenant_id=tenant, key=key, method=method, path=path,
        fingerprint=idempotency.fingerprint(method, path, await _json_body(request)),
        ttl=timedelta(seconds=state.settings.idempotency_ttl_seconds))
    try:
        # A create first tries its one-statement write; anything that leaves open (a replay, a
        # conflict, a refused row) is decided by the transactional write.
        result = None
        if not command.reads:
            result = await crm.write_one_statement(state.statements.claimed_write, req, command, status_code, location)
        if result is None:
            async with checkout(state.pool) as conn:
                result = await crm.write(conn, req, command, status_code, location)
    except crm.DomainError as exc:
        return problem_response(exc.status, exc.title, exc.detail, instance=path)
    if result.verdict is Verdict.EXECUTE:
        state.ringer.ring()  # committed: wake the relay (best effort; its poll covers a lost ring)
        OUTBOX_WRITE_BY_AGGREGATE[aggregate].observe(result.seconds)
        return Response(result.body, status_code=result.status_code, headers=result.headers)
    if result.verdict is Verdict.REPLAY:
        IDEMPOTENCY_REPLAYS.inc()
        return Response(result.body, status_code=result.status_code,
                        headers={**result.headers, "Idempotent-Replayed": "true"})
    if result.verdict is Verdict.IN_FLIGHT:
        IDEMPOTENCY_CONFLICTS.labels("in_flight").inc()
        return problem_response(409, "Request in flight",
                                "A request with this Idempotency-Key is still being processed; retry shortly.",
                                instance=path, headers={"Retry-After": "1"})
    IDEMPOTENCY_CONFLICTS.labels("mismatch").inc()
    return problem_response(422, "Idempotency-Key reused",
                            "This Idempotency-Key was used for a different request (method, path or body).",
                            instance=path)


async def _json_body(request: Request) -> object:
    """The body as the idempotency fingerprint compares it: parsed JSON (canonical, so that key
    order and spacing do not make a different request)."""
    raw = await request.body()
    return orjson.loads(raw) if raw else None


def _columns(spec: AggregateSpec, body: BaseModel, only_set: bool) -> dict:
    by_api = {f.api: f.column for f in spec.fields}
    data = body.model_dump(by_alias=True, exclude_unset=only_set)
    return {by_api[k]: v for k, v in data.items()}


def resource_router(spec: AggregateSpec, models: schemas.ResourceModels) -> APIRouter:
    plural = spec.table
    create_model, patch_model, out_model, page_model = models
    router = APIRouter(prefix=f"/api/crm/{plural}", tags=[plural])
    noun = spec.name

    def location(resource: dict) -> str:
        return f"/api/crm/{plural}/{resource['id']}"

    async def create(body: create_model, request: Request, tenant: Tenant, key: Key, trace: Trace):  # type: ignore[valid-type]
        command = crm.create(spec, tenant, _columns(spec, body, only_set=False), trace)
        return await run_write(request, tenant, key, command, 202, spec.name, location)

    # The hot path: FastCreateRoute solves this route's own inputs without FastAPI's machinery.
    router.add_api_route("", create, methods=["POST"], status_code=202, summary=f"Create a {noun}",
                         response_model=out_model, responses=WRITE_ERRORS, operation_id=f"create_{noun}",
                         route_class_override=FastCreateRoute)

    @router.get("/{item_id}", summary=f"Read a {noun}", response_model=out_model, responses=READ_ERRORS,
                operation_id=f"get_{noun}")
    async def read(item_id: uuid.UUID, request: Request, tenant: Tenant):
        async with checkout(request.app.state.pool) as conn:
            try:
                resource = await crm.get(conn, spec, tenant, item_id)
            except crm.DomainError as exc:
                raise Problem(exc.status, exc.title, exc.detail) from None
        return Response(orjson.dumps(resource), media_type="application/json")

    filter_params = {col: next(f.api for f in spec.fields if f.column == col) for col in spec.filters}

    @router.get("", summary=f"List {plural}, newest first", response_model=page_model, responses=READ_ERRORS,
                operation_id=f"list_{plural}")
    async def list_(request: Request, tenant: Tenant,
                    limit: Annotated[int, Query(ge=1, le=200, description="Page size, 1-200")] = 50,
                    cursor: Annotated[str | None, Query(max_length=200, description="nextCursor of the previous page")] = None,
                    status: Annotated[schemas.JobStatus | None, Query(include_in_schema="status" in filter_params)] = None,
                    accountId: Annotated[uuid.UUID | None, Query(include_in_schema="account_id" in filter_params)] = None):
        filters = {}
        if status is not None and "status" in filter_params:
            filters["status"] = status
        if accountId is not None and "account_id" in filter_params:
            filters["account_id"] = accountId
        async with checkout(request.app.state.pool) as conn:
            try:
                items, next_cursor = await crm.list_page(conn, spec, tenant, filters, limit, cursor)
            except crm.DomainError as exc:
                raise Problem(exc.status, exc.title, exc.detail) from None
        return Response(orjson.dumps({"items": items, "nextCursor": next_cursor}), media_type="application/json")

    @router.patch("/{item_id}", summary=f"Change a {noun}", response_model=out_model, responses=WRITE_ERRORS,
                  operation_id=f"update_{noun}")
    async def patch(item_id: uuid.UUID, body: patch_model, request: Request, tenant: Tenant, key: Key,  # type: ignore[valid-type]
                    trace: Trace):
        changes = _columns(spec, body, only_set=True)
        if not changes:
            raise Problem(422, "Nothing to change", "The body must set at least one field.")
        return await run_write(request, tenant, key, crm.update(spec, tenant, item_id, changes, trace), 200, spec.name)

    @router.delete("/{item_id}", summary=f"Delete a {noun}", status_code=204, responses=WRITE_ERRORS,
                   operation_id=f"delete_{noun}")
    async def remove(item_id: uuid.UUID, request: Request, tenant: Tenant, key: Key, trace: Trace):
        return await run_write(request, tenant, key, crm.delete(spec, tenant, item_id, trace), 204, spec.name)

    return router


# One router per aggregate, in the registry's order.
ROUTERS = tuple(resource_router(spec, schemas.MODELS[spec.name]) for spec in AGGREGATES)
