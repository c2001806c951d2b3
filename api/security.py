"""Authentication on by configuration (AETHER_AUTH=on), as a pure ASGI middleware so that every
route, including the SSE stream and /metrics, is covered by one rule table:

| path              | who                                                       |
|-------------------|-----------------------------------------------------------|
| /api/crm/...      | a tenant token; X-Tenant-Id must name that tenant (403)   |
| /crm-events       | a tenant token (streams only its tenant) or an operator   |
| /metrics, /ops/...| an operator token, when AETHER_AUTH_PROTECT_* is on       |
| /ops/session      | anyone: the Command Center's sign-in                      |
| /, /docs, ...     | anyone                                                    |

Credentials come in the `Authorization: Bearer` header, and nowhere else, with one exception
for browsers. A browser's EventSource cannot send headers, and a token in a URL ends up in proxy
logs, the browser's history and Referer headers, so URLs never carry one (`?access_token=` is
gone; API clients send the header, and a browser app that needs a tenant's stream reads it with
fetch() and the header). Instead the Command Center signs in:

1. GET /ops/crm-events without a credential answers 401 with a sign-in form (HTML, for a
   browser) or problem+json. The form POSTs the token to /ops/session, in the body.
2. /ops/session verifies the token like any other and answers 303 to the page's clean URL with
   a cookie holding a stream ticket (aether_platform.auth.StreamTickets): HMAC-signed, valid
   AETHER_AUTH_STREAM_TICKET_SECONDS (default 1 h), HttpOnly (no script reads it), SameSite=Strict
   (no other site makes the browser send it), Secure when the request came over https, and set
   twice, Path=/ops and Path=/crm-events, so the browser sends it nowhere else. A page reached
   with a bearer header (e.g. through an authenticating proxy) gets the same cookie.
3. The page's EventSource sends the cookie with /crm-events. A ticket is accepted only on
   /crm-events and /ops/, never on the CRM API. An open stream is not cut when its ticket
   expires; a reconnect after that gets 401, and the page asks the operator to sign in again
   (it checks GET /ops/session, which says who is signed in, or 401; opened in the browser,
   /ops/session shows the sign-in form).
Without AETHER_AUTH_STREAM_TICKET_SECRET each API process signs with a key of its own.

An OIDC token whose signing key cannot be fetched now (the issuer is unreachable and the key is
not cached) is 503 problem+json with Retry-After, never 401 or 500. The API's access log is off,
and neither tokens, tickets nor query strings are logged by us.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import orjson

from aether_platform.auth import AuthError, Authenticator, KeysUnavailable, Principal, StreamTickets
from api.problems import PROBLEM_JSON

log = logging.getLogger("aether.api.auth")

SESSION_PATH = "/ops/session"
COOKIE = "aether_stream_ticket"
COOKIE_PATHS = ("/ops", "/crm-events")
PAGE = "/ops/crm-events"
MAX_FORM_BYTES = 16 * 1024
SIGN_IN = (Path(__file__).resolve().parent / "static" / "ops-sign-in.html").read_text()


class Authentication:
    def __init__(self, app, authenticator: Authenticator | None, protect_metrics: bool, protect_ops: bool,
                 tickets: StreamTickets | None = None):
        self.app = app
        self.auth = authenticator
        self.protect_metrics = protect_metrics
        self.protect_ops = protect_ops
        self.tickets = tickets or StreamTickets()

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
        path = scope["path"]
        if path == SESSION_PATH:
            return await self._session(scope, receive, send)
        rule = self._rule(path)
        if rule is None:
            return await self.app(scope, receive, send)
        token = _bearer(scope)
        ticket = _cookie(scope) if token is None and _ticket_path(path) else None
        if token is None and ticket is None:
            return await self._unauthenticated(scope, send, None)
        try:
            principal = await self.auth.verify(token) if token is not None else self.tickets.verify(ticket)
        except KeysUnavailable as exc:
            # aether.auth already warned once when the issuer became unreachable; not per request.
            log.debug("cannot verify a token on %s: %s", path, exc)
            return await _deny(send, scope, 503, "Identity provider unreachable",
                               "The token's signing key is not known here and the identity provider cannot be "
                               "reached to fetch it. Try again later.", retry_after=exc.retry_after)
        except AuthError as exc:
            log.info("rejected a %s on %s: %s", "token" if token is not None else "stream ticket", path, exc)
            if token is None:
                return await self._unauthenticated(scope, send, "Your sign-in has expired or is no longer valid.")
            return await _deny(send, scope, 401, "Invalid token", "The bearer token is not valid.",
                               'Bearer realm="aether", error="invalid_token"')
        if rule == "tenant" and principal.operator:
            return await _deny(send, scope, 403, "Forbidden", "Operator tokens cannot use the CRM API.")
        if rule == "operator" and not principal.operator:
            return await _deny(send, scope, 403, "Forbidden", "This endpoint needs an operator token.")
        scope.setdefault("state", {})["principal"] = principal
        if path == "/crm-events" and not principal.operator:
            scope = {**scope, "query_string": _force_tenant(scope["query_string"], principal)}
        if token is not None and path == PAGE:
            # Reached with a bearer header (an authenticating proxy, a script): the page's own
            # EventSource cannot repeat that header, so it gets the ticket cookie too.
            send = _with_headers(send, self._ticket_cookies(scope, principal))
        await self.app(scope, receive, send)

    async def _unauthenticated(self, scope, send, message: str | None):
        if scope["path"].startswith("/ops/") and _wants_html(scope):
            return await _sign_in_page(send, scope, 401, message)
        return await _deny(send, scope, 401, "Authentication required",
                           message or "Send a bearer token in the Authorization header.", 'Bearer realm="aether"')

    def _ticket_cookies(self, scope, principal: Principal) -> list[tuple[bytes, bytes]]:
        value = self.tickets.issue(principal)
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        return [(b"set-cookie", f"{COOKIE}={value}; Path={p}; Max-Age={self.tickets.ttl_seconds}; HttpOnly; "
                 f"SameSite=Strict{secure}".encode()) for p in COOKIE_PATHS]

    async def _session(self, scope, receive, send):
        """POST: sign in with a token from the form body. GET: who is signed in (401 if nobody)."""
        if scope["method"] == "GET":
            ticket = _cookie(scope)
            try:
                principal = self.tickets.verify(ticket) if ticket else None
            except AuthError:
                principal = None
            if principal is None:
                if _wants_html(scope):  # a browser sent here by the page's "sign in again" link
                    query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
                    return await _sign_in_page(send, scope, 401, "Your sign-in has expired or is no longer valid.",
                                               _safe_next(query.get("next", "")))
                return await _deny(send, scope, 401, "Not signed in", "No valid Command Center sign-in.")
            body = orjson.dumps({"subject": principal.subject, "operator": principal.operator,
                                 "tenant": str(principal.tenant_id) if principal.tenant_id else None})
            return await _respond(send, 200, "application/json", body, [(b"cache-control", b"no-store")])
        if scope["method"] != "POST":
            return await _deny(send, scope, 405, "Method not allowed", "Use POST to sign in, GET to check.",
                               extra=[(b"allow", b"GET, POST")])
        raw = await _read_body(receive, MAX_FORM_BYTES)
        if raw is None:
            return await _deny(send, scope, 413, "Form too large", f"The sign-in form is limited to {MAX_FORM_BYTES} bytes.")
        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        target = _safe_next(form.get("next", ""))
        token = form.get("token", "").strip()
        try:
            principal = await self.auth.verify(token)
        except KeysUnavailable as exc:
            return await _deny(send, scope, 503, "Identity provider unreachable",
                               "The identity provider cannot be reached to check this token. Try again later.",
                               retry_after=exc.retry_after)
        except AuthError as exc:
            log.info("rejected a sign-in: %s", exc)
            return await _sign_in_page(send, scope, 401, "That token is not valid.", target)
        if self.protect_ops and not principal.operator:
            return await _sign_in_page(send, scope, 403, "The Command Center needs an operator token.", target)
        headers = [(b"location", target.encode()), (b"cache-control", b"no-store"),
                   *self._ticket_cookies(scope, principal)]
        await _respond(send, 303, "text/plain; charset=utf-8", b"signed in\n", headers)


def _bearer(scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _ticket_path(path: str) -> bool:
    return path == "/crm-events" or path.startswith("/ops/")


def _cookie(scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == COOKIE and val:
                    return val
    return None


def _wants_html(scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept":
            return b"text/html" in value
    return False


def _safe_next(target: str) -> str:
    """Only back to a Command Center page of this site: never another host, never a token."""
    path, _, query = target.partition("?")
    if not path.startswith("/ops/") or "//" in path or "\\" in path or path == SESSION_PATH:
        return PAGE
    pairs = [(k, v) for k, v in parse_qsl(query) if k in ("types", "tenant")]
    return path + ("?" + urlencode(pairs) if pairs else "")


def _force_tenant(query_string: bytes, principal: Principal) -> bytes:
    """A tenant's stream shows its own tenant, whatever the query asks for."""
    pairs = [(k, v) for k, v in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True) if k != "tenant"]
    pairs.append(("tenant", str(principal.tenant_id)))
    return urlencode(pairs).encode("latin-1")


def _with_headers(send, extra: list[tuple[bytes, bytes]]):
    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] < 400:
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)
    return wrapped


async def _read_body(receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send, status: int, content_type: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


async def _sign_in_page(send, scope, status: int, message: str | None, target: str | None = None) -> None:
    if target is None:
        target = _safe_next(scope["path"] + "?" + scope["query_string"].decode("latin-1"))
    note = f'<p class="message" role="alert">{html.escape(message)}</p>' if message else ""
    page = SIGN_IN.replace("{message}", note).replace("{next}", html.escape(target, quote=True))
    headers = [(b"cache-control", b"no-store"), (b"www-authenticate", b'Bearer realm="aether"'),
               (b"content-security-policy", b"frame-ancestors 'none'"), (b"x-frame-options", b"DENY")]
    await _respond(send, status, "text/html; charset=utf-8", page.encode(), headers)


async def _deny(send, scope, status: int, title: str, detail: str, challenge: str | None = None, *,
                retry_after: int | None = None, extra: list[tuple[bytes, bytes]] = ()) -> None:
    body = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail,
                         "instance": scope["path"]})
    headers = list(extra)
    if challenge:
        headers.append((b"www-authenticate", challenge.encode()))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await _respond(send, status, PROBLEM_JSON, body, headers)
