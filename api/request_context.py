"""Every request gets an id, and every log line written while serving it carries that id and
the request's tenant (aether_platform/logs.py adds them; this middleware binds them).

The id is the client's `X-Request-Id` when it is a plausible id (1-128 characters of letters,
digits and `._:-`; a proxy's or a client's trace id passes), otherwise a fresh UUID, so a log
line can never be forged or bloated through the header. It is echoed in the response's
`X-Request-Id` header, on every response, errors included. The tenant is the authenticated
principal's once authentication has run, before that the `X-Tenant-Id` header's if it is a UUID.
Pure ASGI and outermost, so that every other middleware's lines (the 500 safety net, the
authentication's rejections) are covered.
"""
from __future__ import annotations

import re
import uuid

from aether_platform import logs

_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_UUID = re.compile(rb"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
HEADER = b"x-request-id"


class RequestContext:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = tenant = None
        for name, value in scope["headers"]:
            if name == HEADER:
                request_id = value
            elif name == b"x-tenant-id":
                tenant = value
        if request_id is None or not _VALID_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex.encode()
        header_tenant = tenant.decode() if tenant is not None and _UUID.fullmatch(tenant) else None
        # The authentication middleware puts the principal in this same dict (the ASGI request
        # state, which uvicorn makes per request); the log context reads it from there.
        state = scope.setdefault("state", {})
        token = logs.bind_request(logs.RequestContext(request_id.decode(), header_tenant, state))

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (HEADER, request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logs.unbind_request(token)
