"""Latency from an outbox commit to its Kafka acknowledgement, streaming relay.

Each event is committed in its own transaction, as an API request would, and its commit time is
taken when commit() returns. The relay (a separate process, `python -m aether_platform.relay
--mode streaming`) stamps published_at right after the acknowledgements of its batch, so
published_at − commit time is the commit-to-ack latency, marking included. Baseline in the
same run: kafka_floor, one record produced and flushed at a time at linger 0 (see there).

Rates: 25 % of the API capacity api_write measured in the same round of make bench (goals
judged there, as ratios to the floor), and a fixed 500/s row (bench.report.load_rates).
AETHER_BENCH_LATENCY_SECONDS (default 20) sets how long the writer runs at each rate.
"""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

import psycopg
from confluent_kafka import Producer

from aether_platform import outbox
from aether_platform.db_url import libpq_url
from aether_platform.doorbell import LOOKUP_SQL, Ringer
from aether_platform.relay import RELAY_NAME, RelayConfig
from bench._relay_setup import REPO, bench_database, bench_topic
from bench.relay_idle import cpu_seconds
from bench.report import Figure, emit, load_rates, progress

RATE = 500
SECONDS = float(os.environ.get("AETHER_BENCH_LATENCY_SECONDS", "20"))


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(p * 10) - 1]


def kafka_floor(bootstrap: str, topic: str, n: int, rate: float = RATE) -> list[float]:
    """Produce-to-ack milliseconds of single records at `rate`/s: the fastest a record can be
    acknowledged by this broker on this machine, the floor that commit → ack and API → SSE are
    compared with.

    Each record is produced and then flushed on its own, at linger.ms 0, with the relay's
    durability (acks=all, idempotent) and compression. That is what the relay does with a
    one-record batch: it flushes right after producing, and librdkafka ignores linger during a
    flush. Producing without a flush at the relay's linger.ms (5) would instead time the linger
    and librdkafka's poll granularity, and the relay itself beat that "floor"."""
    cfg = RelayConfig.from_env(bootstrap=bootstrap, topic=topic).producer_config()
    producer = Producer({**cfg, "linger.ms": 0})
    # Warm up first: connection, metadata and the idempotent producer id cost ~300 ms once.
    producer.produce(topic, b"{}", "warm-up")
    producer.flush(30)
    acked: list[float] = []
    failed: list[str] = []

    def report(err, msg, sent):
        if err is None:
            acked.append((time.perf_counter() - sent) * 1000)
        else:
            failed.append(str(err))

    start = time.perf_counter()
    for i in range(n):
        time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        sent = time.perf_counter()
        producer.produce(topic, b"{}", str(i), on_delivery=lambda err, msg, sent=sent: report(err, msg, sent))
        producer.flush(30)
    if failed or len(acked) != n:
        raise RuntimeError(f"Kafka floor: {len(failed)} records failed, {n - len(acked) - len(failed)} unacknowledged"
                           f"{': ' + failed[0] if failed else ''}")
    return acked


def produce_consume_floor(bootstrap: str, topic: str, n: int, rate: float = RATE) -> list[float]:
    """Milliseconds from each record's due time (an open-loop schedule at `rate`/s) to its
    arrival at a bare consumer: the least any produce → consume path can take here, the floor
    that API → SSE is compared with. The producer has the relay's durability at linger 0 and
    flushes each record; the consumer is the SSE hub's (api.stream.hub.consumer_config),
    assigned at the end of every partition. A record not consumed within 30 s fails the run."""
    import threading

    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    from api.stream.hub import consumer_config

    from aether_platform.settings import get_settings

    settings = get_settings().model_copy(update={"kafka_bootstrap_servers": bootstrap})
    consumer = Consumer(consumer_config(settings, f"bench-floor-{uuid.uuid4().hex[:8]}"))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
    run = uuid.uuid4().hex[:8]
    arrived: dict[int, float] = {}
    done = threading.Event()
    started = threading.Event()

    def consume() -> None:
        while not done.is_set():
            msg = consumer.poll(0.05)
            started.set()
            if msg is None or msg.error() is not None:
                continue
            key = msg.key().decode()
            if key.startswith(run):
                arrived.setdefault(int(key.split(":")[1]), time.perf_counter())
        consumer.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    started.wait(10)
    cfg = RelayConfig.from_env(bootstrap=bootstrap, topic=topic).producer_config()
    producer = Producer({**cfg, "linger.ms": 0})
    producer.produce(topic, b"{}", "warm-up")
    producer.flush(30)
    time.sleep(1)  # the consumer's first fetch positions it at the end
    due: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(n):
        due[i] = start + i / rate
        time.sleep(max(0.0, due[i] - time.perf_counter()))
        producer.produce(topic, b"{}", f"{run}:{i}")
        producer.flush(30)
    deadline = time.monotonic() + 30
    while len(arrived) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    reader.join(10)
    if len(arrived) < n:
        raise RuntimeError(f"produce → consume floor: {n - len(arrived)} of {n} records never consumed")
    return [(arrived[i] - due[i]) * 1000 for i in range(n)]


def write_at_rate(dsn: str, seconds: float, rate: float, ring: bool = True) -> dict[str, float]:
    """event_id → wall-clock commit time, one event per transaction at `rate`/s. With `ring`, each
    commit rings the relay's doorbell as the API does; without, the relay finds it by its poll."""
    committed = {}
    tenant = uuid.uuid4()
    ringer = Ringer()
    with psycopg.connect(libpq_url(dsn)) as conn:
        if ring:
            row = conn.execute(LOOKUP_SQL, (RELAY_NAME,)).fetchone()
            ringer.aim(row[0] if row else None)
            conn.commit()
            if not ringer.aimed:
                raise RuntimeError("the streaming relay published no doorbell to ring")
        start = time.perf_counter()
        for i in range(int(seconds * rate)):
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
            event = outbox.make_event("JobUpdated", "job", tenant, uuid.uuid4(), {"Title": f"t{i}", "Status": "Open"})
            with conn.cursor() as cur:
                outbox.write(cur, event)
            conn.commit()
            committed[str(event.event_id)] = time.time()
            ringer.ring()
    ringer.close()
    return committed


def main() -> None:
    rates = load_rates()
    figures: list[Figure] = []
    errors = {"events not published within 60 s": 0}
    counts = []
    with bench_database("aether_bench_latency") as dsn, bench_topic("aetherlink.events.latency") as (bootstrap, topic):
        env = {**os.environ, "DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "AETHER_TOPIC": topic,
               "PYTHONPATH": str(REPO)}
        relay = subprocess.Popen([sys.executable, "-m", "aether_platform.relay", "--mode", "streaming"],
                                 cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
                deadline = time.monotonic() + 30
                while not conn.execute("SELECT count(*) FROM relay_status").fetchone()[0]:
                    if time.monotonic() > deadline or relay.poll() is not None:
                        raise SystemExit("the relay did not start")
                    time.sleep(0.1)
                backend = conn.execute("SELECT pid FROM pg_stat_activity WHERE starts_with(application_name,"
                                       " 'aether-relay:')").fetchone()[0]

                def relay_cpu() -> float:
                    """CPU seconds of the relay process and its database session (/proc): what
                    its polling costs under this load; 0 for the session if it is not readable."""
                    try:
                        session = cpu_seconds(backend)
                    except OSError:
                        session = 0.0
                    return cpu_seconds(relay.pid) + session
                # At the judged rate, also without rings: the same relay found by its poll alone,
                # what the doorbell buys (and costs) in the same run.
                runs = [(label, rate, judged, True) for label, rate, judged in rates]
                runs += [(f"{label}, poll only (no ring)", rate, False, False) for label, rate, judged in rates if judged]
                for label, rate, judged, ring in runs:
                    n = int(SECONDS * rate)
                    progress(f"{label}: Kafka floor, {n:,} records produced and flushed one at a time")
                    floor = kafka_floor(bootstrap, topic, n, rate)
                    progress(f"{label}: streaming relay, writing for {SECONDS:.0f}s")
                    cpu0, t0 = relay_cpu(), time.monotonic()
                    committed = write_at_rate(dsn, SECONDS, rate, ring=ring)
                    cores = (relay_cpu() - cpu0) / (time.monotonic() - t0)
                    deadline = time.monotonic() + 60
                    while conn.execute("SELECT count(*) FROM outbox_events WHERE published_at IS NULL").fetchone()[0]:
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.1)
                    published = dict(conn.execute(
                        "SELECT event_id::text, extract(epoch FROM published_at)::float8 FROM outbox_events"
                        " WHERE published_at IS NOT NULL").fetchall())
                    unpublished = sum(1 for eid in committed if eid not in published)
                    errors["events not published within 60 s"] += unpublished
                    if relay.poll() is not None:
                        raise SystemExit("the relay exited during the run")
                    latencies = [(published[eid] - t) * 1000 for eid, t in committed.items() if eid in published]
                    counts.append(f"{label}: {len(latencies):,} events at {rate:,.0f}/s")
                    p50, p99 = pct(latencies, 50), pct(latencies, 99)
                    f50, f99 = pct(floor, 50), pct(floor, 99)
                    figures += [
                        Figure(f"commit → ack p50, {label}", p50, "ms", "produce+flush floor p50", f50,
                               **(dict(goal="<= 5x floor", at_most=5, on="ratio") if judged else {})),
                        Figure(f"commit → ack p99, {label}", p99, "ms", "produce+flush floor p99", f99,
                               **(dict(goal="<= 10x floor", at_most=10, on="ratio") if judged else {})),
                        Figure(f"commit → ack max, {label}", max(latencies), "ms"),
                        Figure(f"relay CPU (process + session), {label}", cores, "cores"),
                    ]
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(30)
    emit("relay_latency", "Outbox commit → Kafka ack latency, streaming relay",
         "make bench  (or: python -m bench relay_latency)", figures, errors=errors,
         notes=f"{'; '.join(counts)}, one per transaction, for {SECONDS:.0f}s per rate. Floor: one record produced "
               "and flushed at a time at linger 0 (acks=all, idempotent, lz4), at the same rate, just before. The "
               "streaming relay claims at once when a commit rings its doorbell (as the API's writes do) and while "
               "batches come back full; otherwise it polls, after 10 ms while events flow, backing off to 100 ms "
               "when idle (the 'poll only' row: the same relay, the writer not ringing). Batch mode is not measured here: a batch run starts at the next "
               "sensor tick (every 5 s) plus a Dagster run launch (seconds), so its latency is 5–13 s, which is why "
               "streaming is the default.")


if __name__ == "__main__":
    main()
