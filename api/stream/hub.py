"""The one Kafka consumer of an API process, and the memory all its SSE clients read from.

Why one consumer with assign() on every partition: a consumer group would split the partitions
between clients (each browser would see a third of the events), and a consumer per client costs
librdkafka threads and broker connections per browser. Here the cost per client is a position
vector and a task; records are parsed and serialised once.

The consumer runs in its own thread (librdkafka calls block) and hands batches to the event loop,
which owns every other piece of state, so nothing here needs a lock.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from aether_platform.kafka_client import client_config, silent_logger
from api.stream.cursor import Cursor, CursorEncoder, CursorError, topic_epoch
from api.stream import frames
from api.stream.records import DedupWindow, Filter, from_message
from api.stream.ring import PartitionRing

log = logging.getLogger("aether.stream")


def consumer_config(settings, group: str) -> dict:
    # group.id only satisfies librdkafka: partitions are assigned, nothing is ever committed.
    return {**client_config(settings=settings), "group.id": group, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50, "socket.keepalive.enable": True,
            "logger": silent_logger("aether.stream.kafka")}


@dataclass
class StartPoint:
    """Where a new client starts, resolved before its stream opens."""
    positions: list[int]
    resets: list[dict] = field(default_factory=list)


class StreamClient(Protocol):
    """What the hub calls on every client it holds (api.stream.session.SseSession is the one).

    All three run on the event loop from the hub's own callbacks and timer, outside the client's
    task, so none may block or await:
    - deliver(): new records became visible; write the client's frames now if it is parked and in
      step (see send_now), else set `wake` so its task deals with it.
    - on_tick(now): the hub's one timer (monotonic seconds): keepalives, and cancelling a write
      blocked past the send timeout.
    - wake: the event the client's task waits on; the hub sets it, e.g. on shutdown.
    """

    wake: asyncio.Event

    def deliver(self) -> None: ...

    def on_tick(self, now: float) -> None: ...


class StreamHub:
    def __init__(self, settings):
        self.settings = settings
        self.topic = settings.topic
        self.epoch = ""
        self.partitions = 0
        self.rings: list[PartitionRing] = []
        self._high_at_start: list[int] = []
        self._dedup: list[DedupWindow] = []
        self._consumer: Consumer | None = None
        self._meta: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._connect_task: asyncio.Task | None = None
        self._tick_task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.clients: set[StreamClient] = set()
        self._catchup = asyncio.Semaphore(max(1, settings.sse_catchup_consumers))
        self.catchup_active = 0
        self._notify_pending = False
        self._last_notify = 0.0
        # What clients may read: the rings' `next` as of the last wake-up. Records ingested since
        # wait for the next one, so every client woken together renders the same snapshot and
        # the render cache answers all but the first of them.
        self._visible: list[int] = []
        self._render_cache: dict = {}
        self._low_cache: dict[int, tuple[int, float]] = {}
        self.slow_disconnects = 0
        self.wakeups = 0
        self.kafka_errors = 0

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def consumer_running(self) -> bool:
        """The consumer is doing its job or working towards it: polling, or still (re)connecting
        while Kafka is away. False once stopped or shutting down, or if its thread or its
        connect task ended for any other reason (/readyz then turns 503)."""
        if self._stop.is_set() or self.stopping.is_set():
            return False
        if self._thread is not None:
            return self._thread.is_alive()
        return self._connect_task is not None and not self._connect_task.done()

    async def start(self, wait: float = 10.0) -> None:
        """Connect in the background; wait a little so a normal start serves at once, but never
        keep the API from starting when Kafka is down (health reports it)."""
        self._loop = asyncio.get_running_loop()
        self._connect_task = asyncio.create_task(self._connect_forever())
        self._tick_task = asyncio.create_task(self._tick())
        try:
            await asyncio.wait_for(self._ready.wait(), wait)
        except TimeoutError:
            log.warning("stream hub: Kafka not reachable yet; /crm-events asks clients to retry")

    async def _tick(self) -> None:
        """One timer for all clients instead of one per client per wait or write: on uvloop an
        asyncio.timeout() costs ~30 us, which at a thousand clients and dozens of wake-ups a
        second was most of the process's time. Wakes quiet clients for their keepalive and
        cancels writes blocked longer than the send timeout (a slow client)."""
        s = self.settings
        period = max(0.05, min(1.0, s.sse_keepalive_seconds / 2, s.sse_send_timeout_seconds / 3))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for client in list(self.clients):
                client.on_tick(now)

    def begin_shutdown(self) -> None:
        """Ask every open stream to end cleanly (called on SIGTERM, before uvicorn waits for
        connections to finish)."""
        self.stopping.set()
        for client in list(self.clients):
            client.wake.set()

    async def stop(self) -> None:
        self.begin_shutdown()
        self._stop.set()
        if self._connect_task:
            self._connect_task.cancel()
        if self._tick_task:
            self._tick_task.cancel()
        if self._thread:
            await asyncio.to_thread(self._thread.join, 5)
        for c in (self._consumer, self._meta):
            if c is not None:
                await asyncio.to_thread(c.close)

    async def _connect_forever(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self._connect)
                self._ready.set()
                return
            except Exception as exc:  # noqa: BLE001 - keep trying; health shows Kafka down
                log.warning("stream hub: cannot start consumer (%s); retrying", exc)
                await asyncio.sleep(2)

    def _connect(self) -> None:
        s = self.settings
        meta = Consumer(consumer_config(s, s.stream_group))
        try:
            md = meta.list_topics(self.topic, timeout=5)
            t = md.topics.get(self.topic)
            if t is None or t.error is not None or not t.partitions:
                raise RuntimeError(f"topic {self.topic} not available: {t.error if t else 'missing'}")
            n = len(t.partitions)
            marks = [meta.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5) for p in range(n)]
        except Exception:
            meta.close()
            raise
        self.epoch = topic_epoch(self.topic, self._topic_id())
        self.partitions = n
        prefill = max(0, s.sse_prefill_events)
        starts = [max(low, high - prefill) for low, high in marks]
        per_part_bytes = max(1, s.sse_ring_bytes // n)
        self.rings = [PartitionRing(st, s.sse_ring_events, per_part_bytes) for st in starts]
        self._high_at_start = [high for _, high in marks]
        self._visible = list(starts)
        self._dedup = [DedupWindow(s.sse_dedup_window) for _ in range(n)]
        consumer = Consumer(consumer_config(s, s.stream_group))
        consumer.assign([TopicPartition(self.topic, p, st) for p, st in enumerate(starts)])
        self._meta, self._consumer = meta, consumer
        self._thread = threading.Thread(target=self._poll_loop, name="sse-hub-consumer", daemon=True)
        self._thread.start()
        log.info("stream hub: %d partitions of %s from %s (epoch %s)", n, self.topic, starts, self.epoch)

    def _topic_id(self) -> str | None:
        try:
            from confluent_kafka import TopicCollection
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({**client_config(settings=self.settings),
                                 "logger": silent_logger("aether.stream.admin")})
            fut = admin.describe_topics(TopicCollection([self.topic]))[self.topic]
            return str(fut.result(timeout=5).topic_id)
        except Exception:  # noqa: BLE001 - the name alone still makes a valid, weaker epoch
            return None

    # ---- the consumer thread ---------------------------------------------------------------

    def _poll_loop(self) -> None:
        consumer, loop = self._consumer, self._loop
        last_error_log = 0.0
        while not self._stop.is_set():
            try:
                first = consumer.poll(0.2)
                if first is None:
                    continue
                # poll() returns as soon as one record is there; take what else is already
                # fetched without waiting, so a burst becomes one batch and one client wake-up.
                batch = [first, *consumer.consume(999, 0)]
                records = []
                for m in batch:
                    if m.error() is None:
                        records.append(from_message(m, self.topic))
                    elif m.error().code() != KafkaError._PARTITION_EOF:
                        self.kafka_errors += 1
                        if time.monotonic() - last_error_log > 10:
                            last_error_log = time.monotonic()
                            log.warning("stream hub: consumer error: %s", m.error())
                if records:
                    loop.call_soon_threadsafe(self._ingest, records)
            except RuntimeError:
                return  # consumer closed, or the loop is gone at shutdown
            except Exception:  # noqa: BLE001 - one bad batch must not end the stream for everyone
                log.exception("stream hub: poll failed")
                time.sleep(0.5)

    # ---- event-loop side -------------------------------------------------------------------

    def _ingest(self, records) -> None:
        appended = False
        for rec in records:
            self._dedup[rec.partition].mark(rec)
            appended |= self.rings[rec.partition].append(rec)
        if not appended:
            return
        if not self._notify_pending:
            self._notify_pending = True
            # A leading-edge throttle: wake the clients now, unless they were woken less than
            # `spacing` ago, in which case the records ride the next wake-up. Waking N clients
            # costs N task steps and N socket writes, so the spacing bounds that cost (it scales
            # with the number of clients). The trailing linger used before (always wait, then
            # wake) added its whole delay to every event, even when the loop was already behind
            # and the records had waited out a long wake-up anyway: 100 ms of p50 at 1000 clients.
            spacing = self.settings.sse_max_linger_ms / 1000 * min(1.0, len(self.clients) / 1000)
            delay = self._last_notify + spacing - self._loop.time()
            if delay > 0:
                self._loop.call_later(delay, self._notify)
            else:
                self._loop.call_soon(self._notify)  # after any other batch already queued

    def _notify(self) -> None:
        self._notify_pending = False
        self._last_notify = self._loop.time()
        self._visible = [r.next for r in self.rings]
        self._render_cache.clear()
        self.wakeups += 1
        for client in self.clients:
            client.deliver()

    def pin_live(self) -> list[int]:
        """Real offsets for "from now on": where the consumer is, or the high-water mark seen at
        startup if the consumer is still reading the prefill."""
        return [max(r.next, h) for r, h in zip(self.rings, self._high_at_start)]

    def encoder(self, positions: list[int]) -> CursorEncoder:
        return CursorEncoder(self.epoch, positions)

    def cursor(self, positions: list[int]) -> str:
        return Cursor(self.epoch, tuple(positions)).encode()

    def lagging(self, positions: list[int]) -> list[int]:
        return [p for p, pos in enumerate(positions) if pos < self.rings[p].lo]

    def render(self, positions: list[int], flt: Filter, limit: int = 500) -> tuple[bytes, list[int]]:
        """Frames for everything held past `positions`, up to `limit` records. Clients that are
        in step (the usual case) ask the same question, so the answer is computed once per batch."""
        key = (tuple(positions), flt, limit)
        hit = self._render_cache.get(key)
        if hit is not None:
            return hit[0], list(hit[1])
        new = list(positions)
        enc = self.encoder(new)
        out: list[bytes] = []
        skipped = False
        budget = limit
        for p, ring in enumerate(self.rings):
            if budget <= 0:
                break
            if new[p] >= self._visible[p]:
                continue
            records = ring.read(new[p], budget, self._visible[p])
            budget -= len(records)
            skipped |= frames.render(records, new, enc, flt, out)
        if skipped:
            out.append(frames.id_only(enc.text()))
        body = b"".join(out)
        if len(self._render_cache) > 4096:
            self._render_cache.clear()
        self._render_cache[key] = (body, tuple(new))
        return body, new

    # ---- broker look-ups for new clients ---------------------------------------------------

    async def watermarks(self, partition: int) -> tuple[int, int]:
        tp = TopicPartition(self.topic, partition)
        low, high = await asyncio.to_thread(self._meta.get_watermark_offsets, tp, 5)
        self._low_cache[partition] = (low, time.monotonic())
        return low, high

    async def log_start(self, partition: int, max_age: float = 2.0) -> int:
        hit = self._low_cache.get(partition)
        if hit and time.monotonic() - hit[1] < max_age:
            return hit[0]
        return (await self.watermarks(partition))[0]

    async def offsets_at(self, ms: int) -> list[int]:
        tps = [TopicPartition(self.topic, p, ms) for p in range(self.partitions)]
        found = await asyncio.to_thread(self._meta.offsets_for_times, tps, 10)
        out = []
        for tp in found:
            if tp.offset < 0 or tp.offset == OFFSET_END:
                out.append((await self.watermarks(tp.partition))[1])  # nothing that late: the end
            else:
                out.append(tp.offset)
        return out

    async def resolve(self, cursor: Cursor | None, since_ms: int | None) -> StartPoint:
        """Turn the client's request into real offsets for every partition, announcing what
        cannot be served. Raises CursorError for a cursor that cannot belong to this topic."""
        if cursor is None and since_ms is None:
            return StartPoint(self.pin_live())
        if cursor is None:
            return StartPoint(await self.offsets_at(since_ms))
        if len(cursor.offsets) > self.partitions:
            raise CursorError(f"cursor names {len(cursor.offsets)} partitions; {self.topic} has {self.partitions}")
        start = StartPoint([])
        if cursor.epoch != self.epoch:
            # The topic was recreated: the old offsets mean nothing here. Start each partition
            # at its log start and say so.
            for p in range(self.partitions):
                low = (await self.watermarks(p))[0]
                old = cursor.offsets[p] if p < len(cursor.offsets) else 0
                start.positions.append(low)
                start.resets.append(self.reset_info(p, old, low, "cursor is from another incarnation of the topic"))
            return start
        positions = list(cursor.offsets)
        for p in range(len(positions), self.partitions):
            positions.append(await self.log_start(p))  # partitions added since the cursor was issued
        for p, pos in enumerate(positions):
            ring = self.rings[p]
            if pos < ring.lo:
                low = await self.log_start(p, max_age=0)
                if pos < low:
                    start.resets.append(self.reset_info(p, pos, low, "offset is older than the topic's retention"))
                    positions[p] = low
            elif pos > ring.next:
                high = (await self.watermarks(p))[1]
                if pos > high:
                    start.resets.append(self.reset_info(p, pos, high, "offset is beyond the end of the log"))
                    positions[p] = high
        start.positions = positions
        return start

    def reset_info(self, partition: int, old: int, new: int, reason: str) -> dict:
        return {"kind": "reset", "topic": self.topic, "partition": partition, "from": old, "to": new,
                "missed": max(0, new - old), "reason": reason}

    @asynccontextmanager
    async def catchup_slot(self):
        """At most N catch-up consumers per process: each costs librdkafka threads and broker
        connections, which is what this design avoids paying per client."""
        async with self._catchup:
            self.catchup_active += 1
            try:
                yield
            finally:
                self.catchup_active -= 1

    def catchup_consumer(self, starts: dict[int, int]) -> Consumer:
        c = Consumer(consumer_config(self.settings,
                                     f"{self.settings.stream_group}-catchup-{uuid.uuid4().hex[:8]}"))
        c.assign([TopicPartition(self.topic, p, off) for p, off in starts.items()])
        return c

    def health(self) -> dict:
        return {"stream": {
            "ready": self.ready,
            "clients": len(self.clients),
            "catchup_consumers": self.catchup_active,
            "epoch": self.epoch,
            "consumer_position": {str(p): r.next for p, r in enumerate(self.rings)},
            "buffered_from": {str(p): r.lo for p, r in enumerate(self.rings)},
            "buffered_events": sum(len(r) for r in self.rings),
            "slow_disconnects": self.slow_disconnects,
            "wakeups": self.wakeups,
            "kafka_errors": self.kafka_errors,
        }}
