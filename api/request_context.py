"""Every request gets an id, and every log line written while serving it carries that id and
the request's tenant (aether_platform/logs.py adds them; this middleware binds them).

The id is the client's `X-Request-Id` when it is a plausible id (1-128 characters of letters,
digits and `._:-`; a proxy's or a client's trace id passes), otherwise a new one, so a log line
can never be forged or bloated through the header. It is echoed in the response's `X-Request-Id`
header, on every response, errors included. The tenant is the authenticated principal's once
authentication has run, before that the `X-Tenant-Id` header's if it is a UUID.
Pure ASGI and outermost, so that every other middleware's lines (the 500 safety net, the
authentication's rejections) are covered.

Cost matters: this runs on every create. New ids are a random per-process prefix and a counter
(uuid4 reads the kernel's random source, ~5 us here), and headers are decoded only when a line is
actually written.
"""
from __future__ import annotations

import itertools
import os
import re

from aether_platform import logs

_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
HEADER = b"x-request-id"


class _Ids:
    """Unique ids without a system call per request: 16 random hex digits per process (new ones
    in a forked child), then a counter."""

    def __init__(self):
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix, self._count = os.urandom(8).hex(), itertools.count()

    def next(self) -> bytes:
        return f"{self._prefix}{next(self._count):016x}".encode()


_ids = _Ids()


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
            request_id = _ids.next()
        # The authentication middleware puts the principal in this same dict (the ASGI request
        # state, which uvicorn makes per request); the log context reads it from there.
        token = logs.bind_request(logs.RequestContext(request_id, tenant, scope.setdefault("state", {})))
        id_header = (HEADER, request_id)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logs.unbind_request(token)
