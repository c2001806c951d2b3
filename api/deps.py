"""Cross-cutting request dependencies: the tenant, the idempotency key, the trace context.

They are `async def` although they never await: FastAPI runs a plain `def` dependency in a
worker thread, and three thread hand-offs per request cost more than the rest of a write."""
from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import Header, Request

from aether_platform import idempotency
from api.problems import Problem

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")



# Each header rule is a plain function of the raw value and the ASGI scope, raising Problem. The
# FastAPI dependencies below call them, and the create fast path (api.fast_create) calls the same
# functions through HEADER_RULES, so a rule exists once whoever solves the request.

def tenant_of(raw: str | None, scope) -> uuid.UUID:
    if raw is None:
        raise Problem(400, "Missing tenant", "The X-Tenant-Id header is required.")
    try:
        tenant = uuid.UUID(raw)
    except ValueError:
        raise Problem(400, "Malformed tenant", "X-Tenant-Id must be a UUID.") from None
    # With authentication on, the token names the tenant; the header must agree with it.
    principal = scope.get("state", {}).get("principal")
    if principal is not None and principal.tenant_id != tenant:
        raise Problem(403, "Forbidden", "The token is not valid for this tenant.")
    return tenant


_KEY = re.compile(idempotency.KEY_PATTERN)


def key_of(raw: str | None, scope=None) -> str:
    try:
        key = idempotency.parse_key(raw)
    except idempotency.IdempotencyKeyError as exc:
        raise Problem(400, "Invalid Idempotency-Key", str(exc)) from None
    if not _KEY.match(raw):  # parse_key forgives surrounding spaces; the header's pattern does not
        raise Problem(400, "Invalid Idempotency-Key", "Idempotency-Key must not have surrounding spaces.")
    return key


def traceparent_of(raw: str | None, scope=None) -> str | None:
    """W3C trace context, carried into the outbox row and on to the Kafka record; ignored if malformed."""
    return raw if raw and _TRACEPARENT.match(raw) else None


async def tenant_id(request: Request,
              x_tenant_id: Annotated[str, Header(alias="X-Tenant-Id", description="Tenant UUID",
                                                 json_schema_extra={"format": "uuid"})]) -> uuid.UUID:
    return tenant_of(x_tenant_id, request.scope)


async def idempotency_key(idempotency_key: Annotated[str, Header(
        alias="Idempotency-Key", pattern=idempotency.KEY_PATTERN,
        description="Unique per logical request; 1-200 printable ASCII characters, "
                    "optionally as a quoted structured-field string")]) -> str:
    return key_of(idempotency_key)


async def traceparent(request: Request) -> str | None:
    return traceparent_of(request.headers.get("traceparent"))


# Dependency -> (the header it reads, lower-case as ASGI carries it; its rule). A route whose
# dependencies are all here can be solved without FastAPI's dependency machinery.
HEADER_RULES = {tenant_id: (b"x-tenant-id", tenant_of), idempotency_key: (b"idempotency-key", key_of),
                traceparent: (b"traceparent", traceparent_of)}
