"""With authentication on, the OpenAPI document says which operations need a bearer token (so
/docs shows Authorize and tools send the token), from the middleware's own rule table."""
from __future__ import annotations

import httpx


def test_protected_operations_require_the_bearer_scheme(secure_api):
    doc = httpx.get(f"{secure_api.url}/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            needs_token = path.startswith(("/api/crm", "/ops/")) or path in ("/metrics", "/crm-events")
            assert (op.get("security") == [{"bearerAuth": []}]) == needs_token, (method, path)
    # What the document promises is what the server does.
    assert httpx.get(f"{secure_api.url}/api/crm/jobs").status_code == 401
    assert httpx.get(f"{secure_api.url}/").status_code == 200
