"""uvicorn's httptools protocol, with each response's head and first body chunk sent together.

Why: uvicorn writes the status line and headers on `http.response.start` and the body on
`http.response.body`, and uvloop sends each write at once, so every small JSON answer cost two
send() calls. On loopback a send() also runs the receiver's TCP path, about 30 µs each under
load (profiled on the create endpoint, where it was the largest single cost outside the
database). Holding the head until the body arrives, in the same turn of the event loop, saves
one of them per response.

What it never does: delay bytes past the current turn of the loop. A head with no body yet (a
Server-Sent Events stream waiting for its first event, a `100 Continue`) leaves at the next turn.
Everything else is uvicorn's, unchanged.

Run with `uvicorn api.main:app --http api.http_protocol:HttpToolsProtocol` (UVICORN_HTTP below).
"""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http import httptools_impl

UVICORN_HTTP = "api.http_protocol:HttpToolsProtocol"


class _HeadWithBody:
    """The response's view of the connection: its first write (the head) is held until the next
    write, close, or the end of this turn of the loop, whichever comes first."""

    __slots__ = ("_transport", "_loop", "_held", "_first")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first:
            self._first = False
            self._held = data
            self._loop.call_soon(self._flush)
            return
        if self._held is not None:
            data, self._held = self._held + data, None
        self._transport.write(data)

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name):  # is_closing, get_extra_info, … : the connection's own
        return getattr(self._transport, name)


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        # A new request's cycle has been created and its task scheduled, not yet started.
        if self.cycle is not previous and self.cycle is not None:
            self.cycle.transport = _HeadWithBody(self.transport, self.loop)
