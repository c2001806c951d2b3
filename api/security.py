"""Authentication on by configuration (AETHER_AUTH=on), as a pure ASGI middleware so that every
route, including the SSE stream and /metrics, is covered by one rule table:

| path              | who                                                       |
|-------------------|-----------------------------------------------------------|
| /api/crm/...      | a tenant token; X-Tenant-Id must name that tenant (403)   |
| /crm-events       | a tenant token (streams only its tenant) or an operator   |
| /metrics, /ops/...| an operator token, when AETHER_AUTH_PROTECT_* is on       |
| /, /docs, ...     | anyone                                                    |

Browsers' EventSource cannot send headers, so /crm-events and /ops/ also accept the token as
`?access_token=`. The API's access log is off, and query strings are never logged by us.
"""
from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode

import orjson

from aether_platform.auth import AuthError, Authenticator, Principal
from api.problems import PROBLEM_JSON

log = logging.getLogger("aether.api.auth")

QUERY_TOKEN_PATHS = ("/crm-events", "/ops/")


class Authentication:
    def __init__(self, app, authenticator: Authenticator | None, protect_metrics: bool, protect_ops: bool):
        self.app = app
        self.auth = authenticator
        self.protect_metrics = protect_metrics
        self.protect_ops = protect_ops

    def _rule(self, path: str) -> str | None:
        if path.startswith("/api/crm"):
            return "tenant"
        if path == "/crm-events":
            return "any"
        if (path == "/metrics" and self.protect_metrics) or (path.startswith("/ops/") and self.protect_ops):
            return "operator"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.auth is None:
            return await self.app(scope, receive, send)
        rule = self._rule(scope["path"])
        if rule is None:
            return await self.app(scope, receive, send)
        token = _bearer(scope)
        if token is None:
            return await _deny(send, scope, 401, "Authentication required",
                               "Send a bearer token in the Authorization header.", 'Bearer realm="aether"')
        try:
            principal = self.auth.verify(token)
        except AuthError as exc:
            log.info("rejected a token on %s: %s", scope["path"], exc)
            return await _deny(send, scope, 401, "Invalid token", "The bearer token is not valid.",
                               'Bearer realm="aether", error="invalid_token"')
        if rule == "tenant" and principal.operator:
            return await _deny(send, scope, 403, "Forbidden", "Operator tokens cannot use the CRM API.")
        if rule == "operator" and not principal.operator:
            return await _deny(send, scope, 403, "Forbidden", "This endpoint needs an operator token.")
        scope.setdefault("state", {})["principal"] = principal
        if scope["path"] == "/crm-events" and not principal.operator:
            scope = {**scope, "query_string": _force_tenant(scope["query_string"], principal)}
        await self.app(scope, receive, send)


def _bearer(scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    if scope["path"].startswith(QUERY_TOKEN_PATHS):
        for key, value in parse_qsl(scope["query_string"].decode("latin-1")):
            if key == "access_token" and value:
                return value
    return None


def _force_tenant(query_string: bytes, principal: Principal) -> bytes:
    """A tenant's stream shows its own tenant, whatever the query asks for."""
    pairs = [(k, v) for k, v in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
             if k not in ("tenant", "access_token")]
    pairs.append(("tenant", str(principal.tenant_id)))
    return urlencode(pairs).encode("latin-1")


async def _deny(send, scope, status: int, title: str, detail: str, challenge: str | None = None) -> None:
    body = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail,
                         "instance": scope["path"]})
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    if challenge:
        headers.append((b"www-authenticate", challenge.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
