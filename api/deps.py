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



async def tenant_id(request: Request,
              x_tenant_id: Annotated[str, Header(alias="X-Tenant-Id", description="Tenant UUID",
                                                 json_schema_extra={"format": "uuid"})]) -> uuid.UUID:
    try:
        tenant = uuid.UUID(x_tenant_id)
    except ValueError:
        raise Problem(400, "Malformed tenant", "X-Tenant-Id must be a UUID.") from None
    # With authentication on, the token names the tenant; the header must agree with it.
    principal = request.scope.get("state", {}).get("principal")
    if principal is not None and principal.tenant_id != tenant:
        raise Problem(403, "Forbidden", "The token is not valid for this tenant.")
    return tenant


async def idempotency_key(idempotency_key: Annotated[str, Header(
        alias="Idempotency-Key", pattern=idempotency.KEY_PATTERN,
        description="Unique per logical request; 1-200 printable ASCII characters, "
                    "optionally as a quoted structured-field string")]) -> str:
    try:
        return idempotency.parse_key(idempotency_key)
    except idempotency.IdempotencyKeyError as exc:
        raise Problem(400, "Invalid Idempotency-Key", str(exc)) from None


async def traceparent(request: Request) -> str | None:
    """W3C trace context, carried into the outbox row and on to the Kafka record; ignored if malformed."""
    return valid_traceparent(request.headers.get("traceparent"))


def valid_traceparent(value: str | None) -> str | None:
    return value if value and _TRACEPARENT.match(value) else None

