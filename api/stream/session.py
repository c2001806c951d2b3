"""One SSE client: an ASGI response that writes frames from the hub until the client leaves, is
too slow, or the server shuts down.

Delivery: while a client is in step and idle ("parked"), the hub writes its frames itself, from
the one callback that publishes a batch (deliver); its task sleeps through it. Resuming a task
per client per batch, through the whole ASGI stack, was most of the process's time at a
thousand clients (measured: p50 174 ms → 54 ms). The task takes over whenever something is not
ordinary: catching up, a blocked write, a disconnect, a keepalive.

Slow clients: the per-client buffer is the transport's (uvicorn pauses writes at its high-water
mark), so memory per client is bounded. A write that stays blocked for `send_timeout` (the hub's
timer cancels it), or a
position that the ring has already evicted, means the client cannot keep up: it is disconnected,
never skipped ahead, and its last id resumes it without loss. Dropping events to keep a slow
client connected would corrupt its view while looking healthy.
"""
from __future__ import annotations

import asyncio
import logging
import time

from starlette.responses import Response

from api.stream import frames
from api.stream.hub import StartPoint, StreamHub
from api.stream.records import DedupWindow, Filter, from_message

log = logging.getLogger("aether.stream")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    # nginx and similar proxies buffer responses unless told not to; a buffered stream is a dead one.
    (b"x-accel-buffering", b"no"),
]


def send_now(send, message):
    """Run an ASGI `send` until it finishes or first blocks, outside any task. Returns None when
    it finished (the usual case: uvicorn writes to the transport at once unless the client's
    socket buffer is full), else an awaitable that finishes it. Lets the hub write to a thousand
    parked clients from one callback instead of resuming a thousand tasks, each through the
    whole ASGI middleware stack."""
    coro = send(message)
    try:
        blocker = coro.send(None)
    except StopIteration:
        return None
    return _Resume(coro, blocker)


class _Resume:
    """The rest of a send that send_now() started: hands the future the send waits on to the
    awaiting task, as `await coro` would have, and passes cancellation through."""
    __slots__ = ("coro", "blocker")

    def __init__(self, coro, blocker):
        self.coro, self.blocker = coro, blocker

    def __await__(self):
        coro, blocker = self.coro, self.blocker
        while True:
            try:
                yield blocker
            except BaseException as exc:  # noqa: BLE001 - thrown in by the task (cancellation)
                step = coro.throw
                arg = exc
            else:
                step = coro.send
                arg = None
            try:
                blocker = step(arg)
            except StopIteration as done:
                return done.value


class _Slow(Exception):
    pass


class _Gone(Exception):
    pass


class SseSession(Response):
    # A Response subclass only so that FastAPI passes it through as the endpoint's response.
    def __init__(self, hub: StreamHub, start: StartPoint, flt: Filter, extra_headers: list[tuple[bytes, bytes]]):
        super().__init__(status_code=200)
        self.raw_headers = SSE_HEADERS + extra_headers
        s = hub.settings
        self.hub = hub
        self.start = start
        self.flt = flt
        self.positions = list(start.positions)
        self.wake = asyncio.Event()
        self.gone = False
        self.send_timeout = s.sse_send_timeout_seconds
        self.keepalive = s.sse_keepalive_seconds
        self.retry_ms = s.sse_retry_ms
        self._send = None
        self._task: asyncio.Task | None = None
        self._last_write = 0.0
        self._writing_since: float | None = None
        self.too_slow = False
        # True while the task waits in _idle with nothing to write: then, and only then, the hub
        # may write for it (deliver), so two writers never interleave.
        self.parked = False
        self._pending: _Resume | None = None  # a write deliver() started that blocked
        self._failed: BaseException | None = None

    async def __call__(self, scope, receive, send) -> None:
        self._send = send
        self._task = asyncio.current_task()
        hub = self.hub
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        hub.clients.add(self)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._write(self._opening())
            await self._catch_up()
            await self._follow()
            await self._write(frames.SHUTDOWN)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except _Gone:
            pass
        except (_Slow, asyncio.CancelledError):
            if not self.too_slow and not hub.lagging(self.positions):
                raise  # a real cancellation (server exit), not our watchdog
            if self.too_slow:
                self._task.uncancel()
            hub.slow_disconnects += 1
            # Returning without ending the response makes uvicorn close the connection; the
            # client reads what was flushed, reconnects with its last id and loses nothing.
            log.info("stream: disconnecting a slow client at %s", self.positions)
        finally:
            hub.clients.discard(self)
            watcher.cancel()

    def _opening(self) -> bytes:
        cursor = self.hub.cursor(self.positions)
        out = [frames.retry(self.retry_ms)]
        out += [frames.reset(cursor, info) for info in self.start.resets]
        # Pins every partition, quiet ones included, to a real offset before any event arrives.
        out.append(frames.id_only(cursor))
        return b"".join(out)

    async def _watch_disconnect(self, receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self.wake.set()
                return

    def on_tick(self, now: float) -> None:
        """Called by the hub's timer (see StreamHub._tick)."""
        if self._writing_since is not None and now - self._writing_since > self.send_timeout:
            self.too_slow = True
            self._task.cancel()
        elif now - self._last_write >= self.keepalive:
            self.wake.set()

    def deliver(self) -> None:
        """Called by the hub when new records become visible. A parked client in step with the
        hub gets its frames written right here; anything out of the ordinary (behind the ring, a
        blocked write, a disconnect, still catching up) wakes the task to deal with it."""
        hub = self.hub
        if not self.parked or self.gone or hub.lagging(self.positions):
            self.wake.set()
            return
        body, positions = hub.render(self.positions, self.flt)
        if not body:
            return
        self.positions = positions
        try:
            rest = send_now(self._send, {"type": "http.response.body", "body": body, "more_body": True})
        except Exception as exc:  # noqa: BLE001 - the task ends the stream with it
            self._failed = exc
            self.parked = False
            self.wake.set()
            return
        if rest is None:
            self._last_write = time.monotonic()
            return
        # The client's socket buffer is full: its task finishes the write, under the watchdog.
        self._pending = rest
        self._writing_since = time.monotonic()
        self.parked = False
        self.wake.set()

    async def _finish_delivery(self) -> None:
        if self._failed is not None:
            exc, self._failed = self._failed, None
            raise exc
        rest, self._pending = self._pending, None
        if rest is not None:
            await self._complete(rest)  # _writing_since was set when deliver() began the write

    async def _write(self, body: bytes) -> None:
        if self.gone:
            raise _Gone
        self._writing_since = time.monotonic()
        await self._complete(self._send({"type": "http.response.body", "body": body, "more_body": True}))

    async def _complete(self, write) -> None:
        """Await a write that began at _writing_since (the watchdog's reference), then record it."""
        try:
            await write
        finally:
            self._writing_since = None
        if self.gone:
            raise _Gone
        self._last_write = time.monotonic()

    async def _idle(self) -> None:
        """Wait for new records, a disconnect, shutdown or the hub's keepalive tick; write a
        keepalive comment when quiet long enough that proxies might drop the connection."""
        if time.monotonic() - self._last_write < self.keepalive:
            self.parked = True
            try:
                await self.wake.wait()
            finally:
                self.parked = False
            await self._finish_delivery()
            if time.monotonic() - self._last_write < self.keepalive:
                return
        await self._write(frames.KEEPALIVE)

    async def _follow(self) -> None:
        hub = self.hub
        while not hub.stopping.is_set():
            if hub.lagging(self.positions):
                raise _Slow  # the ring moved past this client while it was writing
            self.wake.clear()
            body, self.positions = hub.render(self.positions, self.flt)
            if body:
                await self._write(body)
            else:
                await self._idle()
            if self.gone:
                raise _Gone

    async def _catch_up(self) -> None:
        """Serve positions older than the ring from a temporary consumer of their own, then hand
        over to the ring. The hand-over is exact because both sides work in offsets: the
        temporary consumer stops once each position is inside the ring's [lo, next) range."""
        hub = self.hub
        while not hub.stopping.is_set():
            lagging = hub.lagging(self.positions)
            if not lagging:
                return
            async with hub.catchup_slot():
                await self._catch_up_once(lagging)

    async def _catch_up_once(self, lagging: list[int]) -> None:
        hub = self.hub
        # Start a little early on each partition so the dedup window knows the ids just before
        # the client's position, as the hub's window would have.
        lookback = min(hub.settings.sse_dedup_window, 500)
        starts = {}
        for p in lagging:
            starts[p] = max(await hub.log_start(p), self.positions[p] - lookback)
        windows = {p: DedupWindow(hub.settings.sse_dedup_window) for p in lagging}
        consumer = await asyncio.to_thread(hub.catchup_consumer, starts)
        try:
            enc = hub.encoder(self.positions)
            while not hub.stopping.is_set():
                if not any(self.positions[p] < hub.rings[p].lo for p in lagging):
                    return
                messages = await asyncio.to_thread(consumer.consume, 500, 0.5)
                if self.gone:
                    raise _Gone
                out: list[bytes] = []
                records = []
                expect = list(self.positions)
                for m in messages:
                    if m.error() is not None:
                        continue
                    rec = windows[m.partition()].mark(from_message(m, hub.topic))
                    p, pos = rec.partition, expect[rec.partition]
                    if rec.offset < pos:
                        continue  # look-back only feeds the dedup window
                    if rec.offset > pos:
                        low = await hub.log_start(p, max_age=0)
                        if low > pos:  # retention removed records while we read
                            self.positions[p] = low
                            enc.set(p, low)
                            out.append(frames.reset(enc.text(), hub.reset_info(
                                p, pos, low, "offset is older than the topic's retention")))
                    expect[p] = rec.offset + 1
                    records.append(rec)
                if records and frames.render(records, self.positions, enc, self.flt, out):
                    out.append(frames.id_only(enc.text()))
                if out:
                    await self._write(b"".join(out))
                elif time.monotonic() - self._last_write > self.keepalive:
                    await self._write(frames.KEEPALIVE)
        finally:
            await asyncio.to_thread(consumer.close)
