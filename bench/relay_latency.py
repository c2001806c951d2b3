"""Latency from an outbox commit to its Kafka acknowledgement, streaming relay, at 500 events/s.

Each event is committed in its own transaction, as an API request would, and its commit time is
taken when commit() returns. The relay (a separate process, `python -m aether_platform.relay
--mode streaming`) stamps published_at right after the acknowledgements of its batch, so
published_at − commit time is the commit-to-ack latency, marking included. Baseline in the
same run: a bare produce-to-ack round trip with the relay's producer settings, the floor that
Kafka alone sets.

AETHER_BENCH_LATENCY_SECONDS (default 20) sets how long the writer runs.
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
from aether_platform.relay import RelayConfig
from bench._relay_setup import REPO, bench_database, bench_topic
from bench.report import Figure, emit, progress

RATE = 500
SECONDS = float(os.environ.get("AETHER_BENCH_LATENCY_SECONDS", "20"))


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(p * 10) - 1]


def kafka_floor(bootstrap: str, topic: str, n: int) -> list[float]:
    """Produce-to-ack milliseconds of single records at RATE/s, relay producer settings."""
    producer = Producer(RelayConfig.from_env(bootstrap=bootstrap, topic=topic).producer_config())
    # Warm up first: connection, metadata and the idempotent producer id cost ~300 ms once.
    producer.produce(topic, b"{}", "warm-up")
    producer.flush(30)
    acked: list[float] = []
    sent = {}
    start = time.perf_counter()
    for i in range(n):
        time.sleep(max(0.0, start + i / RATE - time.perf_counter()))
        sent[i] = time.perf_counter()
        producer.produce(topic, b"{}", str(i), on_delivery=lambda err, msg, i=i: acked.append(
            (time.perf_counter() - sent[i]) * 1000))
        producer.poll(0)
    producer.flush(30)
    return acked


def write_at_rate(dsn: str, seconds: float) -> dict[str, float]:
    """event_id → wall-clock commit time, one event per transaction at RATE/s."""
    committed = {}
    tenant = uuid.uuid4()
    with psycopg.connect(libpq_url(dsn)) as conn:
        start = time.perf_counter()
        for i in range(int(seconds * RATE)):
            time.sleep(max(0.0, start + i / RATE - time.perf_counter()))
            event = outbox.make_event("JobUpdated", "job", tenant, uuid.uuid4(), {"Title": f"t{i}", "Status": "Open"})
            with conn.cursor() as cur:
                outbox.write(cur, event)
            conn.commit()
            committed[str(event.event_id)] = time.time()
    return committed


def main() -> None:
    with bench_database("aether_bench_latency") as dsn, bench_topic("aetherlink.events.latency") as (bootstrap, topic):
        progress(f"Kafka floor: {int(SECONDS * RATE):,} single records at {RATE}/s")
        floor = kafka_floor(bootstrap, topic, int(SECONDS * RATE))

        env = {**os.environ, "DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "AETHER_TOPIC": topic,
               "PYTHONPATH": str(REPO)}
        relay = subprocess.Popen([sys.executable, "-m", "aether_platform.relay", "--mode", "streaming"],
                                 cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
                deadline = time.monotonic() + 30
                while not conn.execute("SELECT count(*) FROM relay_status").fetchone()[0]:
                    assert time.monotonic() < deadline and relay.poll() is None, "the relay did not start"
                    time.sleep(0.1)
                progress(f"streaming relay up; writing {RATE} events/s for {SECONDS:.0f}s")
                committed = write_at_rate(dsn, SECONDS)
                deadline = time.monotonic() + 60
                while conn.execute("SELECT count(*) FROM outbox_events WHERE published_at IS NULL").fetchone()[0]:
                    assert time.monotonic() < deadline, "the relay did not drain"
                    time.sleep(0.1)
                published = dict(conn.execute(
                    "SELECT event_id::text, extract(epoch FROM published_at)::float8 FROM outbox_events").fetchall())
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(30)
    latencies = [(published[eid] - t) * 1000 for eid, t in committed.items()]
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    f50, f99 = pct(floor, 50), pct(floor, 99)
    emit("relay_latency", f"Outbox commit → Kafka ack latency, streaming relay, {RATE} events/s",
         "python -m bench.relay_latency",
         figures=[
             Figure("streaming p50", p50, "ms", baseline_name="bare produce→ack p50", baseline=f50,
                    goal="<= 20 ms", met=p50 <= 20),
             Figure("streaming p99", p99, "ms", baseline_name="bare produce→ack p99", baseline=f99,
                    goal="<= 100 ms", met=p99 <= 100),
             Figure("streaming max", max(latencies), "ms"),
         ],
         notes=f"{len(latencies):,} events, one per transaction; the streaming relay claims at most every 20 ms unless a batch comes back full."
               " Batch mode is not measured here: a batch run starts at the next sensor tick (every 5 s) "
               "plus a Dagster run launch (seconds), so its latency is 5–13 s, which is why streaming is the "
               "default.")


if __name__ == "__main__":
    main()
