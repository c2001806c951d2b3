"""Cross-cutting request dependencies: the tenant, the idempotency key, the trace context."""
from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import Header, Request

from aether_platform import idempotency
from api.problems import Problem

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def tenant_id(x_tenant_id: Annotated[str | None, Header(alias="X-Tenant-Id", description="Tenant UUID")] = None
              ) -> uuid.UUID:
    # 400, not FastAPI's 422: a missing or malformed tenant is a bad request, not a bad body.
    if not x_tenant_id:
        raise Problem(400, "Missing tenant", "The X-Tenant-Id header (a UUID) is required.")
    try:
        return uuid.UUID(x_tenant_id)
    except ValueError:
        raise Problem(400, "Malformed tenant", "X-Tenant-Id must be a UUID.") from None


def idempotency_key(idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", description="Unique per logical request; 1-200 printable ASCII characters, "
                                             "optionally as a quoted structured-field string")] = None) -> str:
    try:
        return idempotency.parse_key(idempotency_key)
    except idempotency.KeyError_ as exc:
        raise Problem(400, "Invalid Idempotency-Key", str(exc)) from None


def traceparent(request: Request) -> str | None:
    """W3C trace context, carried into the outbox row and on to the Kafka record; ignored if malformed."""
    value = request.headers.get("traceparent")
    return value if value and _TRACEPARENT.match(value) else None


Tenant = Annotated[uuid.UUID, "tenant"]
