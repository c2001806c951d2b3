"""SSE fan-out: N concurrent clients on one API process while events flow at a fixed rate.

Measures, for the platform's design (one assign() consumer per process, clients as positions in
a shared ring) and for the seed's naive design (FastAPI, one aiokafka consumer per client, served
by the tiny app defined below), in the same run on the same machine:
- delivery latency, p50 and p99, over every delivery to every client, each counted from the
  moment its event was due (the producer runs an open-loop schedule and stamps each record with
  its due time as its Kafka timestamp, which the frames carry), so a late producer is counted;
- events lost (every client must receive every event produced in the window, exactly once);
- server RSS per 1,000 clients;
- client capacity: the most clients served within the goals (p99 <= 250 ms, nothing lost).

The naive design is stepped up in client count from 10 until it misses a goal. Its capacity is
only claimed when measured: if its first step fails to start (server crash, no stream opened,
an exception), that is an error of the run, never a pass, and no capacity ratio is computed.
A later step falling over is the end of its capacity, not an error.

Env overrides shrink the run: SSE_BENCH_CLIENTS (1000), SSE_BENCH_RATE (200 events/s),
SSE_BENCH_SECONDS (15), SSE_BENCH_NAIVE_STEPS ("10,25,50,100,200,400,800,1000").

Run: python -m bench.sse_fanout
"""
from __future__ import annotations

import asyncio
import os
import re
import resource
import subprocess
import sys
import time
import uuid
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from bench import _api as bench_api
from bench.report import Figure, emit, progress

REPO = Path(__file__).resolve().parent.parent
CLIENTS = int(os.environ.get("SSE_BENCH_CLIENTS", 1000))
RATE = int(os.environ.get("SSE_BENCH_RATE", 200))
SECONDS = float(os.environ.get("SSE_BENCH_SECONDS", 15))
NAIVE_STEPS = [int(x) for x in os.environ.get("SSE_BENCH_NAIVE_STEPS", "10,25,50,100,200,400,800,1000").split(",") if x]
P99_GOAL_MS = 250.0
# Each frame's Kafka timestamp, which is its event's due time (see produce()).
FRAME = re.compile(rb'"offset":\d+,"timestamp":(\d+)')
DATA_MARK = b'data: {"kind":"domain_event"'


# ---- the naive server: one Kafka consumer per SSE client ----------------------------------

def naive_app(bootstrap: str, topic: str):
    """What the seed did, minus its consumer-group bug (which would also split partitions
    between clients): FastAPI, and every request gets its own aiokafka consumer, assigned every
    partition at its end, iterated on the event loop."""
    import orjson
    from aiokafka import AIOKafkaConsumer
    from fastapi import FastAPI
    from starlette.responses import StreamingResponse

    app = FastAPI()

    @app.get("/crm-events")
    async def events():
        # No group: aiokafka assigns the subscribed topic's every partition to this consumer.
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="latest", fetch_max_wait_ms=50)
        await consumer.start()
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while not consumer.assignment():
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"no partitions of {topic} assigned within 30 s")
                await asyncio.sleep(0.05)
            for tp in consumer.assignment():  # resolve the positions now: the client is told it is ready below
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise

        async def body():
            try:
                yield b"retry: 2000\nid: start\n\n"
                async for m in consumer:
                    data = orjson.dumps({"kind": "domain_event", "topic": m.topic, "partition": m.partition,
                                         "offset": m.offset, "timestamp": m.timestamp,
                                         "key": m.key.decode() if m.key else None,
                                         "value": orjson.loads(m.value)})
                    yield b"id: %d-%d\ndata: %s\n\n" % (m.partition, m.offset, data)
            finally:
                await consumer.stop()

        return StreamingResponse(body(), media_type="text/event-stream")

    return app


# ---- servers ------------------------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


class Server:
    def __init__(self, kind: str, env: dict[str, str], log_dir: Path):
        self.kind = kind
        self.log = open(log_dir / f"sse-bench-{kind}.log", "ab")
        naive = ["--app", "bench.sse_fanout:naive_asgi", "--factory"] if kind == "naive" else []
        try:
            self.proc, url = bench_api.start_api({**os.environ, **env}, *naive, log=self.log)
        except RuntimeError as exc:
            raise RuntimeError(f"{kind} server: {exc}") from None
        self.port = int(url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        self.log.close()


def naive_asgi():
    return naive_app(os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["AETHER_TOPIC"])


# ---- the load: cheap asyncio clients ------------------------------------------------------

class Client(asyncio.Protocol):
    """Every client parses every frame (its due-time stamp, one C regex per read), so latency
    covers every delivery; per-frame Python work is kept to one map(int) pass and array
    extends, which keeps a thousand clients cheap next to the server on a small machine
    (the load generator's own CPU is reported beside the server's)."""

    def __init__(self, run: "Run"):
        self.run = run
        self.tail = b""
        self.ready = asyncio.get_running_loop().create_future()
        self.count = 0
        self.stamp_sum = 0
        self.closed = False

    def connection_made(self, transport):
        transport.write(f"GET {self.run.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())

    def data_received(self, data: bytes):
        now_ms = time.time() * 1000
        buf = self.tail + data if self.tail else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.tail = buf
            return
        self.tail = buf[cut + 2:]
        if not self.ready.done() and b"id: " in buf:
            self.ready.set_result(True)
        found = FRAME.findall(buf, 0, cut)
        if found:
            stamps = array("q", map(int, found))
            self.count += len(stamps)
            self.stamp_sum += sum(stamps)  # with the count, exposes a loss hidden by a duplicate
            self.run.stamps.extend(stamps)
            self.run.received.extend([now_ms] * len(stamps))

    def connection_lost(self, exc):
        self.closed = True
        if not self.ready.done():
            self.ready.set_result(False)


@dataclass
class Run:
    path: str
    stamps: array = field(default_factory=lambda: array("q"))
    received: array = field(default_factory=lambda: array("d"))


def produce(bootstrap: str, topic: str, rate: int, seconds: float) -> tuple[int, int]:
    """Produce `rate` events/s for `seconds`; return how many records were written and the sum of
    their timestamps (including one warm-up record, which clients also receive)."""
    import orjson
    from confluent_kafka import Producer

    from aether_platform.outbox import make_event

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "enable.idempotence": True})
    written = [0, 0]
    failed = []

    def delivered(err, msg):
        if err is None:
            written[0] += 1
            written[1] += msg.timestamp()[1]
        else:
            failed.append(err)

    # Connect and initialise the idempotent producer first: events stamped before the producer
    # can send would measure its start-up, not the stream.
    producer.produce(topic, value=b"{}", partition=0, on_delivery=delivered)
    producer.flush(30)
    tenant = uuid.uuid4()
    total = int(rate * seconds)
    start, wall0 = time.monotonic(), time.time()
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ev = make_event("JobCreated", "job", tenant, uuid.uuid4(), {"Title": f"bench {i}", "Status": "Open"})
        # The record's timestamp is its due time: the frames carry it, so each delivery's
        # latency counts from when the event was due, including any lag of this producer.
        producer.produce(topic, key=ev.aggregate_key.encode(), value=orjson.dumps(ev.payload),
                         timestamp=int((wall0 + (due - start)) * 1000),
                         headers=[("event_id", str(ev.event_id).encode()), ("event_type", b"JobCreated"),
                                  ("tenant_id", str(tenant).encode())], on_delivery=delivered)
        producer.poll(0)
    producer.flush(30)
    if failed:
        raise RuntimeError(f"{len(failed)} records not delivered: {failed[0]}")
    return written[0], written[1]


@dataclass
class Result:
    kind: str
    clients: int
    connected: int = 0
    p50: float = float("nan")
    p99: float = float("nan")
    lost: int = 0
    duplicates: int = 0
    rss_per_1000: float = float("nan")
    threads: int = 0
    cpu: float = float("nan")  # server CPU, cores busy during the window
    load_cpu: float = float("nan")  # this process (clients and producer), cores busy
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.connected == self.clients and self.lost == 0 and self.p99 <= P99_GOAL_MS


async def load(server: Server, n: int, bootstrap: str, topic: str) -> Result:
    res = Result(server.kind, n)
    loop = asyncio.get_running_loop()
    idle_rss = rss_bytes(server.proc.pid)
    run = Run("/crm-events")
    clients: list[Client] = []
    transports = []
    for i in range(0, n, 50):  # connect in waves: a thousand SYNs at once only measures the backlog
        batch = []
        for _ in range(min(50, n - i)):
            batch.append(loop.create_connection(lambda: Client(run), "127.0.0.1", server.port))
        for r in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(r, Exception):
                res.error = f"connect failed: {r}"
                continue
            transports.append(r[0])
            clients.append(r[1])
    try:
        ready = await asyncio.wait_for(asyncio.gather(*(c.ready for c in clients)), timeout=120)
        res.connected = sum(1 for r in ready if r)
    except TimeoutError:
        res.connected = sum(1 for c in clients if c.ready.done() and c.ready.result())
        res.error = res.error or f"only {res.connected}/{n} streams opened within 120 s"
    progress(f"{server.kind}: {res.connected}/{n} clients connected; producing {RATE}/s for {SECONDS:.0f}s")
    if res.connected == 0:
        return res
    cpu0, own0, t0 = cpu_seconds(server.proc.pid), cpu_seconds(os.getpid()), time.monotonic()
    expected, expected_sum = await asyncio.to_thread(produce, bootstrap, topic, RATE, SECONDS)
    res.cpu = (cpu_seconds(server.proc.pid) - cpu0) / (time.monotonic() - t0)
    res.load_cpu = (cpu_seconds(os.getpid()) - own0) / (time.monotonic() - t0)
    loaded_rss = rss_bytes(server.proc.pid)
    res.threads = threads(server.proc.pid)
    deadline = time.monotonic() + 10  # let the last events arrive
    while time.monotonic() < deadline and any(c.count < expected and not c.closed for c in clients):
        await asyncio.sleep(0.1)
    for t in transports:
        t.close()
    for c in clients:
        if not c.ready.done() or not c.ready.result():
            continue
        res.lost += max(0, expected - c.count)
        res.duplicates += max(0, c.count - expected)
        if c.count == expected and c.stamp_sum != expected_sum:
            res.lost += 1  # same count, different offsets: a loss hidden by a duplicate
    lat = sorted(r - s for r, s in zip(run.received, run.stamps))
    if lat:
        res.p50 = lat[len(lat) // 2]
        res.p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    res.rss_per_1000 = (loaded_rss - idle_rss) / max(1, res.connected) * 1000 / 2**20
    progress(f"{server.kind} x{n}: p50 {res.p50:.0f} ms, p99 {res.p99:.0f} ms, lost {res.lost}, "
             f"dup {res.duplicates}, RSS/1000 {res.rss_per_1000:.1f} MiB, threads {res.threads}, "
             f"server CPU {res.cpu:.2f} cores, load generator CPU {res.load_cpu:.2f} cores {res.error}")
    return res


def measure(kind: str, n: int, env: dict[str, str], log_dir: Path, bootstrap: str, topic: str) -> Result:
    try:
        server = Server(kind, env, log_dir)
    except RuntimeError as exc:
        return Result(kind, n, error=str(exc))
    try:
        time.sleep(2)  # the platform's consumer assigns and fetches metadata before clients arrive
        # uvloop for the load generator too: it shares the 2 cores with the server, and on the
        # default loop its own callbacks were a third of the latency it reported.
        return uvloop.run(load(server, n, bootstrap, topic))
    except Exception as exc:  # noqa: BLE001 - a design falling over is a result, not a crash
        return Result(kind, n, error=f"{type(exc).__name__}: {exc}")
    finally:
        server.stop()


def main() -> int:
    from confluent_kafka.admin import AdminClient

    from aether_platform.topics import TopicSpec, ensure_topic
    from devstack import stack

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cfg = stack.Config()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or cfg.kafka_bootstrap
    topic = f"aetherlink.events.bench-sse-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, TopicSpec(name=topic, partitions=3, replication_factor=1))
    log_dir = REPO / ".stack" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "AETHER_TOPIC": topic,
           "DATABASE_URL": os.environ.get("DATABASE_URL") or cfg.database_url,
           "AETHER_SSE_MAX_CLIENTS": str(max(CLIENTS, 1) * 2), "PYTHONPATH": str(REPO)}
    try:
        progress(f"platform design: {CLIENTS} clients, {RATE} events/s, {SECONDS:.0f}s window (topic {topic})")
        hub = measure("platform", CLIENTS, env, log_dir, bootstrap, topic)
        naive_results = []
        for n in [s for s in NAIVE_STEPS if s <= CLIENTS]:
            progress(f"naive design: {n} clients")
            r = measure("naive", n, env, log_dir, bootstrap, topic)
            naive_results.append(r)
            if not r.ok:
                break
    finally:
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics([topic])

    # Capacity: the largest step passed before the first miss. A first step that errored (did
    # not start, opened no stream, raised) measured nothing: an error of the run, never a pass.
    naive_capacity = 0
    for r in naive_results:
        if not r.ok:
            break
        naive_capacity = r.clients
    # Measured only if the naive design reached a step it could not carry; a design that passed
    # every step has a capacity above the last one, unknown, and gives no ratio either.
    naive_measured = bool(naive_capacity) and any(not r.ok for r in naive_results)
    first = naive_results[0] if naive_results else None
    naive_broken = first is None or bool(first.error) or first.connected == 0
    hub_capacity = CLIENTS if hub.ok else 0
    errors = {
        "platform: clients not connected": CLIENTS - hub.connected,
        "platform: events lost": hub.lost,
        "platform: duplicates": hub.duplicates,
        "platform: errors": int(bool(hub.error)),
        "naive baseline failed to start": int(naive_broken),
    }
    # Same-load comparison where the naive design could carry it; otherwise its largest passing step.
    naive_ok = [r for r in naive_results if r.ok]
    naive_same = next((r for r in naive_results if r.clients == CLIENTS and r.connected), None)
    naive_ref = naive_same or (naive_ok[-1] if naive_ok else (naive_results[-1] if naive_results else None))
    ref_name = f"naive, {naive_ref.clients} clients" if naive_ref else "naive"
    figures = [
        Figure("delivery latency p50", hub.p50, "ms", ref_name, naive_ref.p50 if naive_ref else None),
        Figure("delivery latency p99", hub.p99, "ms", ref_name, naive_ref.p99 if naive_ref else None,
               goal=f"<= {P99_GOAL_MS:.0f} ms", at_most=P99_GOAL_MS),
        # (no baseline column: a ratio to zero is undefined; the naive losses are in the notes)
        Figure("events lost", hub.lost + hub.duplicates, "events", goal="0", at_most=0),
        Figure("server RSS per 1,000 clients", hub.rss_per_1000, "MiB", ref_name,
               naive_ref.rss_per_1000 if naive_ref else None),
        Figure("server threads under load", hub.threads, "threads", ref_name, naive_ref.threads if naive_ref else None),
        Figure("server CPU during the window", hub.cpu, "cores", ref_name, naive_ref.cpu if naive_ref else None),
        # Shares the 2 cores with the server, so it is part of what the latency figures measure.
        Figure("load generator CPU (clients and producer)", hub.load_cpu, "cores", ref_name,
               naive_ref.load_cpu if naive_ref else None),
        # A naive capacity of 0 (every step missed a goal) gives no baseline, so no ratio, so
        # the goal is not met: a capacity verdict needs both capacities measured.
        Figure("client capacity within goals (at least)", hub_capacity, "clients", "naive capacity (measured)",
               float(naive_capacity) if naive_measured else None, goal=">= 5x naive", at_least=5, on="ratio"),
    ]
    steps = "; ".join(f"{r.clients}: {'ok' if r.ok else 'FAIL'} (connected {r.connected}, p99 {r.p99:.0f} ms, "
                      f"lost {r.lost}{', ' + r.error if r.error else ''})" for r in naive_results)
    notes = (f"{CLIENTS} SSE clients on one API process (uvicorn, 1 worker) while {RATE} events/s flow for "
             f"{SECONDS:.0f}s; latency runs from each event's due time (an open-loop producer) to the client's "
             f"read, over every delivery to every client. "
             f"The platform was measured at {CLIENTS} clients only, so its capacity is a lower bound. "
             f"Naive design (FastAPI, one aiokafka consumer per client) stepped up until it missed a goal: {steps}"
             f"{'' if naive_measured else ' (its capacity was not bracketed by a failing step after a passing one: no ratio)'}. "
             f"Platform: {hub.connected}/{CLIENTS} connected, {hub.duplicates} duplicates"
             f"{', ' + hub.error if hub.error else ''}.")
    emit("sse_fanout", "SSE fan-out: one shared consumer vs one consumer per client",
         "make bench  (or: python -m bench sse_fanout)", figures, notes, errors=errors)
    # A missed speed goal is a figure in BENCHMARKS.md, as in every other benchmark; the run fails
    # when the platform lost events or could not be measured, or the baseline could not start.
    return 0 if not any(errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
