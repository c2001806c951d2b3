"""Relay throughput: a pre-filled outbox relayed to real Kafka (acks=all, idempotent producer),
against the database ceiling measured in the same run: the same claim and mark, batch for
batch, without Kafka.

And again while outbox retention retires published rows at the same time: the outbox also holds
as many rows published 8 days ago, and `python -m aether_platform.retention` (the core the Dagster
asset runs) deletes them, batch after batch with its VACUUM, for as long as the relay runs. Its
goal (issue 20): at least 0.8 of the same ceiling, i.e. retention does not starve the relay.

AETHER_BENCH_EVENTS (default 1,000,000) sets the outbox size; AETHER_RELAY_BATCH_SIZE the batch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import psycopg

from aether_platform.db_url import libpq_url
from aether_platform.relay import CLAIM_SQL, SESSION_OPTIONS, Relay, RelayConfig, RelaySettings, mark_published
from bench._relay_setup import REPO, bench_database, bench_topic
from bench.report import Figure, emit, progress

EVENTS = int(os.environ.get("AETHER_BENCH_EVENTS", "1000000"))
EVENTS_PER_AGGREGATE = 10


def prefill(dsn: str, n: int, published_days_ago: int | None = None) -> None:
    """n JobUpdated events over n/10 aggregates, interleaved, through COPY: pending, or
    published that many days ago."""
    tenant = str(uuid.uuid4())
    aggregates = [str(uuid.uuid4()) for _ in range(max(1, n // EVENTS_PER_AGGREGATE))]
    with psycopg.connect(libpq_url(dsn)) as conn, conn.cursor() as cur:
        oldest = None
        if published_days_ago is not None:
            oldest = cur.execute("SELECT now() - make_interval(days => %s)", (published_days_ago,)).fetchone()[0]
        with cur.copy("COPY outbox_events (tenant_id, type, payload, occurred_at, event_id, aggregate_type,"
                      " aggregate_key, published_at) FROM STDIN") as copy:
            chunk = []
            for i in range(n):
                agg = aggregates[i % len(aggregates)]
                payload = (f'{{"Type": "JobUpdated", "TenantId": "{tenant}", "JobId": "{agg}", '
                           f'"Title": "Inspect boiler #{i}", "Status": "Scheduled", "Ts": "2026-11-26T14:00:00.000Z"}}')
                # Published rows 40 ms apart, as a relay spreads them (retention walks published_at).
                published = r"\N" if oldest is None else (oldest + timedelta(milliseconds=40 * i)).isoformat()
                chunk.append(f"{tenant}\tJobUpdated\t{payload}\t2026-11-26 14:00:00+00\t{uuid.uuid4()}\tjob\t{agg}"
                             f"\t{published}\n")
                if len(chunk) == 10_000:
                    copy.write("".join(chunk))
                    chunk.clear()
            copy.write("".join(chunk))
        conn.commit()
        conn.execute("ANALYZE outbox_events")
        conn.commit()


def reset(dsn: str) -> None:
    with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
        conn.execute("TRUNCATE outbox_events")


def claim_and_mark(dsn: str, batch_size: int) -> int:
    """The database ceiling: the relay's claim and mark statements, on a session set up as the
    relay's, with no Kafka in between."""
    done = 0
    with psycopg.connect(libpq_url(dsn), options=SESSION_OPTIONS) as conn:
        while True:
            rows = conn.execute(CLAIM_SQL, (batch_size,)).fetchall()
            if not rows:
                conn.commit()
                return done
            with conn.pipeline():
                mark_published(conn, [(r[0], 0, r[0]) for r in rows])
                conn.commit()
            done += len(rows)


def timed(label: str, fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    seconds = time.perf_counter() - t0
    progress(f"{label}: {n:,} events in {seconds:.1f}s = {n / seconds:,.0f}/s")
    return seconds, n


def main() -> None:
    batch = RelaySettings().batch_size
    with bench_database("aether_bench_relay") as dsn, bench_topic("aetherlink.events.bench") as (bootstrap, topic):
        progress(f"prefill {EVENTS:,} events (COPY)")
        prefill(dsn, EVENTS)
        secs, n = timed(f"ceiling: claim-and-mark, batch {batch}, no Kafka", lambda: claim_and_mark(dsn, batch))
        ceiling = n / secs

        reset(dsn)
        progress(f"prefill {EVENTS:,} events again for the relay")
        prefill(dsn, EVENTS)
        cfg = RelayConfig.from_env(dsn=dsn, bootstrap=bootstrap, topic=topic)
        relay = Relay(cfg, mode="batch")
        secs, n = timed(f"relay to Kafka, batch {batch}", lambda: relay.run().published)
        rate = n / secs

        reset(dsn)
        progress(f"prefill {EVENTS:,} events published 8 days ago and {EVENTS:,} pending ones")
        prefill(dsn, EVENTS, published_days_ago=8)
        prefill(dsn, EVENTS)
        retention = subprocess.Popen(
            # Runs of at most 1 s, each reported, every 0.2 s: retention never pauses while the relay runs.
            [sys.executable, "-m", "aether_platform.retention", "--retention-seconds", str(7 * 86400),
             "--max-seconds", "1", "--every", "0.2"],
            cwd=REPO, env={**os.environ, "DATABASE_URL": dsn}, stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        runs: list[dict] = []
        reader = threading.Thread(target=lambda: runs.extend(json.loads(line) for line in retention.stdout), daemon=True)
        reader.start()
        relay_r = Relay(cfg, mode="batch")
        try:
            secs_r, n_r = timed(f"relay to Kafka, batch {batch}, retention retiring", lambda: relay_r.run().published)
        finally:
            retention_died = retention.poll() is not None
            if not retention_died:
                os.killpg(retention.pid, signal.SIGTERM)
            retention.wait(30)
            reader.join(10)
        rate_r = n_r / secs_r
        retired = sum(r["retired"] for r in runs)
        progress(f"retention retired {retired:,} rows in {len(runs)} runs while the relay ran")
    errors = {"events not relayed": 2 * EVENTS - n - n_r,
              "delivery failures": relay.totals.failures + relay_r.totals.failures,
              "dead-lettered": relay.totals.dead_lettered + relay_r.totals.dead_lettered,
              "retention process died": int(retention_died), "retention retired nothing": int(retired == 0)}

    emit("relay_throughput", "Outbox relay throughput (pre-filled outbox → Kafka, acks=all, idempotent)",
         "make bench  (or: python -m bench relay_throughput)",
         figures=[
             Figure("relay events/s", rate, "events/s", goal=">= 30,000 events/s", at_least=30_000),
             Figure("relay / database ceiling", rate, "events/s", baseline_name="claim-and-mark without Kafka",
                    baseline=ceiling, goal=">= 0.4 of ceiling", at_least=0.4, on="ratio"),
             Figure("relay / database ceiling, retention retiring at the same time", rate_r, "events/s",
                    baseline_name="claim-and-mark without Kafka", baseline=ceiling, goal=">= 0.8 of ceiling",
                    at_least=0.8, on="ratio"),
         ], errors=errors,
         notes=f"{EVENTS:,} events over {EVENTS // EVENTS_PER_AGGREGATE:,} aggregates, batch size {batch}, "
               f"3 partitions, lz4, linger.ms {cfg.linger_ms}. The seed's design published at most 20 events/s. "
               f"With retention: the outbox also held {EVENTS:,} rows published 8 days ago, and retention "
               f"(7 days, runs of at most 1 s every 0.2 s) retired {retired:,} of them in {len(runs)} runs while the relay ran.")


if __name__ == "__main__":
    main()
