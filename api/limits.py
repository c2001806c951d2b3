"""Request body size limit, enforced before and while the body is read (413 problem+json)."""
from __future__ import annotations

import orjson

from api.problems import PROBLEM_JSON


class BodySizeLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, send)
        received = 0
        rejected = False

        async def counted_receive():
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not rejected:
                    # Answer now, then tell the app the client went away so it stops reading;
                    # anything it still tries to send is dropped.
                    rejected = True
                    await self._reject(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not rejected:
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not rejected:
                raise

    async def _reject(self, scope, send):
        body = orjson.dumps({"type": "about:blank", "title": "Payload Too Large", "status": 413,
                             "detail": f"The request body exceeds {self.max_bytes} bytes.", "instance": scope["path"]})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
