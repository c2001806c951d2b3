"""Soak: the whole pipeline (API → outbox → streaming relay → Kafka → SSE) at a steady rate for
minutes, with outbox retention cycling, to show that nothing drifts: per minute, API p99,
end-to-end p99, outbox rows, table + index bytes and relay lag. Its figures are the ratio of the
last minute to the first minute after warm-up (flat means <= 1.2), and the events lost or
duplicated on the topic (0).

- Rate: a fixed fraction (--fraction, default 0.25) of the API capacity measured in the same
  run, with the same servers, just before the soak (wrk, 50 connections, 10 s; without wrk a
  closed-loop Python client, which counts its own CPU against the API).
- Retention: shortened to --retention-seconds (default 30) and run every --retire-every seconds
  (default 10) by `python -m aether_platform.retention`, the core that the Dagster asset runs,
  so that it cycles many times a minute. The first ceil((retention + every) / 60) minutes fill
  the table up to its steady size and are left out of the ratios.
- Latency: open loop, so a stall is counted: API latency from each request's due time to its
  answer; end to end from the due time to the event's arrival on an SSE client.
- Lost/duplicated: at the end the topic is read from the beginning; every accepted job must be
  there exactly once (by its key, the job id: a create is one event). Every non-202 answer, failed connection,
  retention failure and exited process counts as an error, and so does every error of the
  capacity run that sets the rate.

`python -m bench soak --minutes 30` (or `python -m bench.soak --minutes 30`);
make bench runs AETHER_BENCH_SOAK_MINUTES (default 3).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import uvloop
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from aether_platform.db_url import libpq_url
from bench._relay_setup import REPO, bench_database, bench_topic, warm_up_broker
from bench import _api as bench_api
from bench._load import CLIENTS, LoadResult, exchange, open_loop
from bench.e2e_latency import SseReader
from bench.relay_latency import pct
from bench.report import Figure, emit, progress
from devstack import stack


SAMPLE_SQL = """
    SELECT count(*), pg_table_size('outbox_events') + pg_indexes_size('outbox_events'),
           coalesce(extract(epoch FROM clock_timestamp() - min(occurred_at)
                            FILTER (WHERE published_at IS NULL AND dead_lettered_at IS NULL)), 0)
    FROM outbox_events
"""


async def closed_loop(port: int, seconds: float) -> tuple[float, int]:
    """(creates/s, other answers) with CLIENTS connections each sending its next request on the
    previous answer."""
    tenant, done, refused, end = str(uuid.uuid4()).encode(), 0, 0, time.monotonic() + seconds

    async def client():
        nonlocal done, refused
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < end:
            head, _ = await exchange(reader, writer, tenant)
            accepted = head.startswith(b"HTTP/1.1 202")
            done += accepted
            refused += not accepted
        writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return done / (time.monotonic() - t0), refused


def capacity(port: int, seconds: int = 10) -> tuple[float, str, dict[str, int]]:
    """(creates/s, how it was measured, the errors of that run by kind): a capacity measured
    through errors sets the soak's rate wrong, so they count against the soak like its own."""
    if shutil.which("wrk"):
        from bench.api_write import wrk

        rps, _, _, errs = wrk(port, seconds)
        return rps, "wrk, 50 connections", {f"capacity run: wrk {k}": v for k, v in errs.items()}
    rps, refused = uvloop.run(closed_loop(port, seconds))
    return rps, "closed-loop Python client, 50 connections", {"capacity run: non-202 answers": refused}


class Sampler(threading.Thread):
    """Every second: outbox rows, table + index bytes, relay lag (age of the oldest pending row)."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn, self.samples, self.stop = dsn, [], threading.Event()

    def run(self) -> None:
        with psycopg.connect(libpq_url(self.dsn), autocommit=True) as conn:
            while not self.stop.wait(1.0):
                rows, size, lag = conn.execute(SAMPLE_SQL).fetchone()
                self.samples.append((time.monotonic(), rows, size, float(lag)))


def topic_counts(bootstrap: str, topic: str, timeout: float = 60) -> dict[str, int]:
    """Record key → how many records of that key are on the topic, every partition from the start.
    A soak job has exactly one event (JobCreated, keyed by the job id), so 2 is a duplicate."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    counts: dict[str, int] = {}
    position = {p: 0 for p in parts}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(position[p] < ends[p] for p in parts):
        for m in consumer.consume(10_000, timeout=0.5):
            if m.error():
                continue
            position[m.partition()] = m.offset() + 1
            key = (m.key() or b"").decode()
            counts[key] = counts.get(key, 0) + 1
    consumer.close()
    return counts


def windows(load: LoadResult, arrivals: dict[str, float], samples: list, start: float, minutes: int) -> list[dict]:
    out = []
    for w in range(minutes):
        lo, hi = start + 60 * w, start + 60 * (w + 1)
        api = sorted(a.latency * 1000 for a in load.accepted if lo <= a.due < hi)
        e2e = sorted((arrivals[j] - due) * 1000 for j, due in load.due_of.items() if lo <= due < hi and j in arrivals)
        s = [x for x in samples if lo <= x[0] < hi] or samples[-1:]
        out.append({"minute": w + 1, "requests": len(api), "api_p99": pct(api, 99) if len(api) > 10 else 0.0,
                    "e2e_p99": pct(e2e, 99) if len(e2e) > 10 else 0.0, "rows": s[-1][1], "bytes": s[-1][2],
                    "max_lag": max(x[3] for x in s)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench soak")
    p.add_argument("--minutes", type=int, default=int(os.environ.get("AETHER_BENCH_SOAK_MINUTES", 3)))
    p.add_argument("--fraction", type=float, default=0.25, help="of the measured API capacity")
    p.add_argument("--retention-seconds", type=int, default=30)
    p.add_argument("--retire-every", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.minutes < 2:
        p.error("--minutes must be at least 2 (a warm-up minute and a measured one)")
    warm = min(args.minutes - 1, math.ceil((args.retention_seconds + args.retire_every) / 60))
    workers = stack.default_api_workers()
    with bench_database("aether_bench_soak") as dsn, bench_topic("aetherlink.events.bench-soak") as (bootstrap, topic):
        env = {**os.environ, "DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "AETHER_TOPIC": topic,
               "PYTHONPATH": str(REPO), "AETHER_WRITE_RATE_PER_TENANT": "0"}
        progress("warming the broker up for 10s")
        warm_up_broker(bootstrap, topic, 10)
        progress(f"starting the API ({workers} workers) and a streaming relay")
        api, url = bench_api.start_api(env, "--workers", str(workers), "--log-level", "warning")
        port = int(url.rsplit(":", 1)[1])
        procs = {
            "api": api,
            "relay": subprocess.Popen([sys.executable, "-m", "aether_platform.relay", "--mode", "streaming"],
                                      cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)}
        retirements: list[dict] = []
        try:
            cap, how, cap_errors = capacity(port)
            rate = max(10.0, args.fraction * cap)
            progress(f"API capacity {cap:,.0f} creates/s ({how}); soak at {rate:,.0f}/s for {args.minutes} min, "
                     f"retention {args.retention_seconds}s every {args.retire_every:g}s")
            with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:  # the capacity run's rows
                conn.execute("TRUNCATE outbox_events")
                conn.execute("VACUUM outbox_events")
            procs["retention"] = subprocess.Popen(
                [sys.executable, "-m", "aether_platform.retention", "--retention-seconds", str(args.retention_seconds),
                 "--every", str(args.retire_every)], cwd=REPO, env=env, start_new_session=True,
                stdout=subprocess.PIPE, text=True)
            threading.Thread(target=lambda: retirements.extend(
                json.loads(line) for line in procs["retention"].stdout), daemon=True).start()
            tenant = str(uuid.uuid4())
            reader = SseReader(f"{url}/crm-events?tenant={tenant}")
            reader.start()
            reader.ready.wait(10)
            sampler = Sampler(dsn)
            sampler.start()
            start = time.monotonic() + 0.2
            load = uvloop.run(open_loop("127.0.0.1", port, tenant, rate, args.minutes * 60))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not set(load.due_of) <= set(reader.arrivals):
                time.sleep(0.5)
            reader.stop = True
            sampler.stop.set()
            exited = [name for name, proc in procs.items() if proc.poll() is not None]
        finally:
            for proc in procs.values():
                bench_api.stop(proc, timeout=30)
        counts = topic_counts(bootstrap, topic)
    return report(args, warm, cap, how, rate, load, reader.arrivals, sampler.samples, start, retirements,
                  counts, exited, cap_errors)


def report(args, warm, cap, how, rate, load, arrivals, samples, start, retirements, counts, exited,
           cap_errors: dict[str, int]) -> int:
    rows = windows(load, arrivals, samples, start, args.minutes)
    first, last = rows[warm], rows[-1]
    # Every accepted create is one JobCreated event keyed by the job id (the capacity run's jobs
    # and the broker warm-up have other keys).
    lost = sum(1 for job in load.due_of if job not in counts)
    duplicated = sum(counts[job] - 1 for job in load.due_of if counts.get(job, 0) > 1)
    not_streamed = len(set(load.due_of) - set(arrivals))
    errors = sum(load.errors.values()) + sum(cap_errors.values()) + len(exited)
    retired = sum(r["retired"] for r in retirements)

    def ratio(key: str) -> float:
        return last[key] / first[key] if first[key] else float("inf")

    table = ["| minute | requests | API p99 ms | e2e p99 ms | outbox rows | table+index MiB | max relay lag s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['minute']}{' (warm-up)' if r['minute'] <= warm else ''} | {r['requests']:,} | "
                     f"{r['api_p99']:.1f} | {r['e2e_p99']:.1f} | {r['rows']:,} | {r['bytes'] / 2**20:.2f} | "
                     f"{r['max_lag']:.2f} |")
    for line in table:
        print(line)
    flat = "<= 1.2"
    emit("soak", f"Soak: the whole pipeline at {args.fraction:.0%} of the API's capacity, retention cycling",
         f"python -m bench soak --minutes {args.minutes}", [
             Figure("API p99, last minute", last["api_p99"], "ms", f"minute {first['minute']}", first["api_p99"],
                    goal=f"ratio {flat}", met=ratio("api_p99") <= 1.2),
             Figure("end-to-end p99, last minute", last["e2e_p99"], "ms", f"minute {first['minute']}",
                    first["e2e_p99"], goal=f"ratio {flat}", met=ratio("e2e_p99") <= 1.2),
             Figure("outbox table + index bytes, end of last minute", last["bytes"] / 2**20, "MiB",
                    f"minute {first['minute']}", first["bytes"] / 2**20, goal=f"ratio {flat}",
                    met=ratio("bytes") <= 1.2),
             Figure("events lost on the topic", lost, "events", goal="0", met=lost == 0),
             Figure("events duplicated on the topic", duplicated, "events", goal="0", met=duplicated == 0),
             Figure("errors (non-202, connection, exited process)", errors, "errors", goal="0", met=errors == 0),
         ],
         notes=(f"{len(load.due_of):,} jobs accepted at {rate:,.0f}/s = {args.fraction:.0%} of {cap:,.0f} creates/s "
                f"measured just before ({how}); retention {args.retention_seconds}s run every "
                f"{args.retire_every:g}s ({len(retirements)} runs, {retired:,} rows retired); accepted but not "
                f"seen by the SSE client: {not_streamed}; errors by kind: {load.errors | cap_errors}"
                f"{'; exited early: ' + ', '.join(exited) if exited else ''}. Ratios compare the last minute "
                f"with minute {first['minute']} (the first {warm} fill the table).\n\n" + "\n".join(table)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
