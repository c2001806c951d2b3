"""The create endpoints' fast path: POST /api/crm/{accounts,contacts,jobs} served without
FastAPI's routing, dependency solving and body handling.

Why: profiled under load, those layers cost more CPU than the write itself (about 0.7 of the
2 ms a create took on one core), and a create is the API's hot path.

What it serves: only requests it can answer exactly as the FastAPI route would, i.e. a JSON body
the route's model accepts and well-formed X-Tenant-Id and Idempotency-Key headers (agreeing with
the token's tenant when authentication is on). Anything else passes, body untouched, to the
FastAPI route, which stays the single definition of every validation answer and of the OpenAPI
document. Past validation both take the same code, api.routers.resources.perform_write, so a
fast answer and a routed one are the same bytes; tests/api/test_fast_create.py holds them to it.

It sits inside the app's own middlewares (metrics, errors, authentication, request limits), so
those apply to it as to every route.
"""
from __future__ import annotations

import re
import uuid

import orjson
from pydantic import ValidationError

from aether_platform import idempotency
from api.deps import valid_traceparent
from api.limits import replay_body
from api.problems import DATABASE_UNAVAILABLE, database_unavailable
from api.routers.resources import CREATES, CreateRecipe, perform_write

_KEY = re.compile(idempotency.KEY_PATTERN)
_WANTED = {b"x-tenant-id", b"idempotency-key", b"content-type", b"traceparent"}


class FastCreate:
    def __init__(self, app, state):
        self.app = app
        self.state = state  # the FastAPI app's state: settings, pool, write limiter

    async def __call__(self, scope, receive, send):
        recipe = CREATES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if recipe is None:
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        accepted = _accept(scope, body, recipe)
        if accepted is None:
            return await self.app(scope, replay_body(body, receive), send)
        tenant, key, data, model, trace = accepted
        scope["route"] = recipe.route  # the metrics label, as routing would have set it
        path = scope["path"]
        try:
            response = await perform_write(self.state, "POST", path, tenant, key, data,
                                           recipe.command(tenant, model, trace), 202, recipe.spec.name,
                                           recipe.location)
        except DATABASE_UNAVAILABLE as exc:
            response = database_unavailable("POST", path, exc)
        await response(scope, receive, send)


def _accept(scope, body: bytes, recipe: CreateRecipe):
    """(tenant, key, json, model, traceparent) when the route would accept the request, else None."""
    headers: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED and name not in headers:  # the first of repeated headers, as Starlette reads them
            headers[name] = value.decode("latin-1")
    if headers.get(b"content-type", "").partition(";")[0].strip().lower() != "application/json":
        return None
    try:
        tenant = uuid.UUID(headers[b"x-tenant-id"])
        raw_key = headers[b"idempotency-key"]
        if not _KEY.match(raw_key):
            return None
        key = idempotency.parse_key(raw_key)
        data = orjson.loads(body)
        model = recipe.model.model_validate(data)
    except (KeyError, ValueError, ValidationError, idempotency.IdempotencyKeyError):
        return None  # orjson's and pydantic's errors are ValueErrors too
    principal = scope.get("state", {}).get("principal")
    if principal is not None and principal.tenant_id != tenant:
        return None
    return tenant, key, data, model, valid_traceparent(headers.get(b"traceparent"))


async def _read_body(receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
