"""Request limits enforced before the app sees a request, each answered with a problem+json:
header size (431), body size (413, also for bodies without Content-Length) and JSON nesting
depth (422). Bodies are small (64 KiB by default), so a JSON body is read whole here and then
handed to the app unchanged."""
from __future__ import annotations

import orjson

from api.problems import PROBLEM_JSON

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True when arrays/objects nest deeper than `limit`, brackets inside strings ignored."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


class RequestLimits:
    def __init__(self, app, max_body_bytes: int, max_header_bytes: int, max_json_depth: int):
        self.app = app
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes
        self.max_depth = max_json_depth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        if sum(len(k) + len(v) + 4 for k, v in headers) > self.max_headers:
            return await _problem(send, scope, 431, "Request Header Fields Too Large",
                                  f"The request headers exceed {self.max_headers} bytes.")
        declared = dict(headers).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await self._too_large(scope, send)
        if scope["method"] not in _BODY_METHODS:
            return await self.app(scope, receive, send)

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                return await self._too_large(scope, send)
            if not message.get("more_body", False):
                break
        if json_depth_exceeds(body, self.max_depth):
            return await _problem(send, scope, 422, "JSON nested too deeply",
                                  f"Arrays and objects may nest at most {self.max_depth} levels.")
        await self.app(scope, replay_body(bytes(body), receive), send)

    async def _too_large(self, scope, send):
        await _problem(send, scope, 413, "Payload Too Large", f"The request body exceeds {self.max_body} bytes.")


def replay_body(body: bytes, receive):
    """A `receive` that hands the app a body already read, then defers to the real one."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


async def _problem(send, scope, status: int, title: str, detail: str) -> None:
    body = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail,
                         "instance": scope["path"]})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
