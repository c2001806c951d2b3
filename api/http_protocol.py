"""uvicorn's httptools protocol, with each response's head and first body chunk sent together.

Why: uvicorn writes the status line and headers on `http.response.start` and the body on
`http.response.body`, and uvloop sends each write at once, so every small JSON answer cost two
send() calls. On loopback a send() also runs the receiver's TCP path, about 30 µs each under
load (profiled on the create endpoint, where it was the largest cost outside the database).
Holding the head until the next write, in the same turn of the event loop, saves one of them per
response.

Guarantees:
- Order: every byte goes through one wrapper around the connection's transport, which the
  protocol and its request cycles share, so a held head always leaves before anything written
  after it, whoever writes it (a body, a 400 for a bad pipelined request, a close).
- No delay past the current turn of the loop: a head with no body yet (a Server-Sent Events
  stream waiting for its first event) leaves at the next turn.
- Nothing lost on close: closing through the wrapper, or the peer's end of stream, sends a held
  head first.
- Back-pressure unchanged: only the head, a few hundred bytes, is ever held; bodies go straight
  to the transport, which pauses the writer as before.

- Every way of writing or ending the stream goes through the hold: `write`, `writelines`,
  `write_eof`, `close`, `abort`. Any other transport method that sends bytes would bypass it, so
  the wrapper refuses to forward one it does not know (AttributeError), rather than reorder.
- Built for uvicorn's httptools protocol as of uvicorn 0.54 (the pinned version): the protocol's
  internals it hooks (`connection_made`, `on_headers_complete`, `cycle`, `eof_received`) are not
  public API, so importing this module under another uvicorn release fails at once.

`python -m api` (api/__main__.py) serves the API with this protocol.
"""
from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http import httptools_impl

BUILT_FOR_UVICORN = "0.54."
if not uvicorn.__version__.startswith(BUILT_FOR_UVICORN):
    raise ImportError(f"api.http_protocol hooks uvicorn {BUILT_FOR_UVICORN}x internals, found uvicorn "
                      f"{uvicorn.__version__}: re-check HttpToolsProtocol against it, then update BUILT_FOR_UVICORN")

# The transport's own read-only and flow-control methods, forwarded as they are. Anything else
# (a new way to send bytes in a future asyncio or uvloop) must be wrapped before it is used.
_FORWARDED = frozenset({"is_closing", "get_extra_info", "pause_reading", "resume_reading", "is_reading",
                        "set_write_buffer_limits", "get_write_buffer_size", "get_write_buffer_limits",
                        "can_write_eof", "set_protocol", "get_protocol"})


class HeadHoldingTransport:
    """The connection's transport, as the protocol and its request cycles see it."""

    __slots__ = ("_transport", "_loop", "_held", "_hold_next")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._hold_next = False

    def hold_next_write(self) -> None:
        """The next write is a response head: keep it for the write that follows, at most until
        the end of this turn of the loop."""
        self._hold_next = True

    def write(self, data: bytes) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.writelines((held, data))  # one send, no copy of the body
            return
        if self._hold_next:
            self._hold_next = False
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, chunks) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.writelines((held, *chunks))
            return
        if self._hold_next:  # a head in pieces is still a head: hold it whole
            self.write(b"".join(chunks))
            return
        self._transport.writelines(chunks)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name):
        if name not in _FORWARDED:
            raise AttributeError(f"HeadHoldingTransport does not forward {name!r}: it could bypass a held "
                                 "head; wrap it in api/http_protocol.py first")
        return getattr(self._transport, name)


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop))

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # a request cycle was created (not a websocket upgrade)
            # Its first write is its head. For a pipelined request still queued behind another
            # response, this may hold a write of that response instead: still in order, and still
            # sent by the end of the turn.
            self.transport.hold_next_write()

    def eof_received(self) -> None:
        # The event loop closes the transport itself right after this returns.
        self.transport.flush()
        return super().eof_received()
