"""Outbox growth and the cost of retention: what a large outbox_events does to the write path and
the relay's claim, and what retiring published rows costs, measured at table sizes of our choice.

For each size N (AETHER_BENCH_GROWTH_ROWS, comma-separated, default 1000000) a fresh database
gets N published rows spread over 8 days (so 1/8 are past a 7-day retention) plus the indexes
and a VACUUM ANALYZE, as a long-running outbox would have. Then:
- create: single-row outbox inserts (the outbox part of a create) p50/p99, one client, back to
  back, alternating with the same inserts into a 1,000-row copy of the table (the baseline) —
  and again while retention deletes 100k rows;
- claim: the relay's claim statement over 500 pending rows (rolled back), median of 30;
- retire: retention deleting the oldest 100k rows (keyset batches of 5000), then the VACUUM
  that makes their space reusable;
- dead-letter count: the /metrics query with no index (a sequential scan of the table).
Baseline for claim and count: the same figure at a 1,000-row table in the same run.

Partitioning, the alternative design, is measured once, at the first size of 1M rows or more: the same rows in a
table partitioned by id into 100k-id partitions; single-row insert p50/p99 and DETACH + DROP of
one partition.

Env: AETHER_BENCH_GROWTH_ROWS (default 1000000), AETHER_BENCH_GROWTH_PARTITIONED_AT (the size at
which to measure partitioning; default the first of 1M rows or more, 0 = none).
"""
from __future__ import annotations

import os
import statistics
import threading
import time
import uuid

import psycopg

from aether_platform import retention
from aether_platform.db_url import libpq_url
from aether_platform.outbox import INSERT_SQL, make_event
from aether_platform.relay import CLAIM_SQL
from bench._relay_setup import bench_database
from bench.relay_latency import pct
from bench.report import Figure, emit, progress

SIZES = [int(s) for s in os.environ.get("AETHER_BENCH_GROWTH_ROWS", "1000000").split(",")]
CHUNK = 1_000_000
RETIRE_ROWS = 100_000
# Partitioning is measured at the smallest size of at least 1M rows (it copies the table once).
PARTITIONED_AT = int(os.environ.get("AETHER_BENCH_GROWTH_PARTITIONED_AT") or min([n for n in SIZES if n >= 1_000_000] or [0]))

FILL_SQL = """
    INSERT INTO outbox_events (tenant_id, type, payload, occurred_at, published_at, event_id, aggregate_type,
                               aggregate_key, kafka_partition, kafka_offset)
    SELECT x.tenant, 'JobCreated',
           jsonb_build_object('Type', 'JobCreated', 'TenantId', x.tenant, 'JobId', x.job, 'Title', 'growth probe',
                              'Status', 'Open', 'Ts', x.ts),
           x.ts, x.ts + interval '15 ms', gen_random_uuid(), 'job', x.job::text, g %% 3, g
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g,
         LATERAL (SELECT now() - interval '8 days' + (g::float8 / %(n)s) * interval '8 days' AS ts,
                         gen_random_uuid() AS job,
                         ('00000000-0000-4000-8000-' || lpad((g %% 100)::text, 12, '0'))::uuid AS tenant) x
"""


def fill(dsn: str, n: int) -> None:
    with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
        for lo in range(1, n + 1, CHUNK):
            conn.execute(FILL_SQL, {"lo": lo, "hi": min(n, lo + CHUNK - 1), "n": n})
            progress(f"  {min(n, lo + CHUNK - 1):,} rows")
        conn.execute("VACUUM ANALYZE outbox_events")


def insert_latencies(dsn: str, seconds: float, table: str = "outbox_events") -> list[float]:
    """Back-to-back single-row outbox inserts into `table` for `seconds`, each its own commit
    with synchronous_commit off: the statement's own cost (index maintenance and heap), without
    the WAL flush, whose wait on a shared machine's disk would drown it."""
    tenant = uuid.uuid4()
    sql = INSERT_SQL.replace("outbox_events", table, 1)
    out = []
    with psycopg.connect(libpq_url(dsn), autocommit=True, options="-c synchronous_commit=off") as conn:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            e = make_event("JobCreated", "job", tenant, uuid.uuid4(), {"Title": "probe", "Status": "Open"})
            t0 = time.perf_counter()
            conn.execute(sql, e.params())
            out.append((time.perf_counter() - t0) * 1000)
    return out


def interleaved(dsn: str, tables: list[str], rounds: int = 10, chunk: float = 0.5) -> dict[str, list[float]]:
    """Insert latencies per table, alternating short chunks so that the machine's noise (other
    tenants of a shared box) falls on every table alike."""
    out: dict[str, list[float]] = {t: [] for t in tables}
    for _ in range(rounds):
        for t in tables:
            out[t].extend(insert_latencies(dsn, chunk, t))
    return out


def claim_ms(dsn: str) -> float:
    with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
        tenant = uuid.uuid4()
        with conn.cursor() as cur:
            cur.executemany(INSERT_SQL, [make_event("JobCreated", "job", tenant, uuid.uuid4(), {"S": i}).params()
                                         for i in range(500)])
        # As autovacuum would have seen it: with no pending row in the statistics, the planner
        # checks "an earlier row of the key is blocked" by walking every pending row (via the
        # seed's published_at index) for each candidate, 500 × 500 rows, whatever the table size.
        conn.execute("ANALYZE outbox_events")
        times = []
        for _ in range(30):
            with conn.transaction(force_rollback=True):
                t0 = time.perf_counter()
                assert len(conn.execute(CLAIM_SQL, (500,)).fetchall()) == 500
                times.append((time.perf_counter() - t0) * 1000)
        conn.execute("DELETE FROM outbox_events WHERE published_at IS NULL")
    return statistics.median(times)


def retire_100k(dsn: str) -> tuple[float, float, list[float], float]:
    """Seconds to retire the oldest RETIRE_ROWS published rows (per 100k), seconds of the VACUUM
    after, the insert latencies measured while the retirement ran, and the shared buffers one
    batch touched per row (which, unlike the seconds, a shared machine's load does not move)."""
    with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
        keep = conn.execute("SELECT extract(epoch FROM now() - published_at) FROM outbox_events"
                            " WHERE published_at IS NOT NULL ORDER BY published_at OFFSET %s LIMIT 1",
                            (RETIRE_ROWS,)).fetchone()[0]
        # Load-independent cost: buffers one 5,000-row batch touches (EXPLAIN ANALYZE runs it).
        plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + retention.RETIRE_BATCH_SQL,
                            {"after": retention.EPOCH, "batch": 5000,
                             "cutoff": conn.execute(retention.CUTOFF_SQL, (int(keep),)).fetchone()[0]}).fetchone()[0]
        top = plan[0]["Plan"]
        buffers_per_row = (top["Shared Hit Blocks"] + top["Shared Read Blocks"]) / 5000
        lat: list[float] = []
        done = threading.Event()

        def writer():
            while not done.is_set():
                lat.extend(insert_latencies(dsn, 0.5))

        t = threading.Thread(target=writer)
        t.start()
        t0 = time.perf_counter()
        r = retention.retire_published(conn, int(keep), batch_size=5000)
        seconds = time.perf_counter() - t0
        done.set()
        t.join()
        assert abs(r.retired + 5000 - RETIRE_ROWS) < RETIRE_ROWS * 0.02, r
        t0 = time.perf_counter()
        conn.execute("VACUUM outbox_events")
        return seconds * RETIRE_ROWS / r.retired, time.perf_counter() - t0, lat, buffers_per_row


def dead_letter_count_ms(dsn: str) -> float:
    with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.execute("SELECT count(*) FROM outbox_events WHERE dead_lettered_at IS NOT NULL")
        return (time.perf_counter() - t0) * 1000


def sizes(dsn: str) -> tuple[int, int]:
    with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
        return conn.execute("SELECT pg_table_size('outbox_events'), pg_indexes_size('outbox_events')").fetchone()


def measure(n: int) -> dict:
    with bench_database(f"aether_bench_growth_{n}") as dsn:
        progress(f"{n:,} published rows: filling")
        fill(dsn, n)
        table, index = sizes(dsn)
        progress(f"  table {table / 2**20:,.0f} MiB, indexes {index / 2**20:,.0f} MiB; measuring")
        with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
            # The baseline: the same table definition holding 1,000 rows, in the same database.
            conn.execute("CREATE TABLE outbox_small (LIKE outbox_events INCLUDING ALL)")
            conn.execute("INSERT INTO outbox_small SELECT * FROM outbox_events ORDER BY id LIMIT 1000")
            conn.execute("VACUUM ANALYZE outbox_small")
        part = partitioned(dsn, n) if n == PARTITIONED_AT else None
        lat = interleaved(dsn, ["outbox_small", "outbox_events"] + (["outbox_part"] if part is not None else []))
        quiet = lat["outbox_events"]
        if part is not None:
            part.update(insert_p50=pct(lat["outbox_part"], 50), insert_p99=pct(lat["outbox_part"], 99),
                        detach_drop_s=drop_partition(dsn))
        claim = claim_ms(dsn)
        dl = dead_letter_count_ms(dsn)
        retire_s, vacuum_s, during, buffers = retire_100k(dsn) if n > RETIRE_ROWS * 2 else (0.0, 0.0, [], 0.0)
    r = {"n": n, "table_mib": table / 2**20, "index_mib": index / 2**20,
         "small_p50": pct(lat["outbox_small"], 50), "small_p99": pct(lat["outbox_small"], 99),
         "insert_p50": pct(quiet, 50), "insert_p99": pct(quiet, 99), "claim_ms": claim, "dead_letter_count_ms": dl, "retire_100k_s": retire_s, "retire_buffers_per_row": buffers,
         "vacuum_s": vacuum_s, "insert_p99_during_retire": pct(during, 99) if len(during) > 10 else 0.0,
         "partitioned": part}
    progress(f"  {r}")
    return r


def partitioned(dsn: str, n: int) -> dict:
    """The same rows in a table partitioned by id into 100k-id partitions (insert latency is
    measured beside the plain table; drop_partition() is what retention would do instead)."""
    with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
        # No UNIQUE (event_id): PostgreSQL refuses a unique constraint without the partition key.
        conn.execute("CREATE SEQUENCE outbox_part_id_seq START %s" % (n + 1))
        conn.execute("CREATE TABLE outbox_part (LIKE outbox_events INCLUDING DEFAULTS) PARTITION BY RANGE (id)")
        conn.execute("ALTER TABLE outbox_part ALTER id SET DEFAULT nextval('outbox_part_id_seq')")
        conn.execute("ALTER TABLE outbox_part ADD PRIMARY KEY (id)")
        for cols in ("published_at, occurred_at", "tenant_id"):
            conn.execute(f"CREATE INDEX ON outbox_part ({cols})")
        conn.execute("CREATE INDEX ON outbox_part (id) WHERE published_at IS NULL AND dead_lettered_at IS NULL")
        conn.execute("CREATE INDEX ON outbox_part (aggregate_key, id) WHERE published_at IS NULL")
        step = RETIRE_ROWS
        for lo in range(0, n + 10 * step, step):
            conn.execute(f"CREATE TABLE outbox_part_{lo // step} PARTITION OF outbox_part"
                         f" FOR VALUES FROM ({lo}) TO ({lo + step})")
        conn.execute("INSERT INTO outbox_part SELECT * FROM outbox_events WHERE id <= %s", (n,))
        conn.execute("VACUUM ANALYZE outbox_part")
    return {}


def drop_partition(dsn: str) -> float:
    with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.execute("ALTER TABLE outbox_part DETACH PARTITION outbox_part_0")
        conn.execute("DROP TABLE outbox_part_0")
        seconds = time.perf_counter() - t0
        conn.execute("DROP TABLE outbox_part")
    return seconds


def main() -> None:
    base = measure(1000)
    runs = [measure(n) for n in SIZES]
    figures = []
    for r in runs:
        tag = f"{r['n'] / 1e6:g}M rows"
        figures += [
            Figure(f"{tag}: outbox insert p50", r["insert_p50"], "ms", "same table with 1k rows", r["small_p50"]),
            Figure(f"{tag}: outbox insert p99", r["insert_p99"], "ms", "same table with 1k rows", r["small_p99"]),
            Figure(f"{tag}: relay claim of 500", r["claim_ms"], "ms", "1k rows", base["claim_ms"]),
            Figure(f"{tag}: dead-letter count (/metrics)", r["dead_letter_count_ms"], "ms", "1k rows",
                   base["dead_letter_count_ms"]),
            Figure(f"{tag}: retire 100k rows", r["retire_100k_s"], "s"),
            Figure(f"{tag}: retire, buffers touched per row", r["retire_buffers_per_row"], "buffers"),
            Figure(f"{tag}: VACUUM after retiring 100k", r["vacuum_s"], "s"),
            Figure(f"{tag}: outbox insert p99 while retiring", r["insert_p99_during_retire"], "ms",
                   "same table, quiet", r["insert_p99"]),
        ]
        if r["partitioned"] is not None:
            p = r["partitioned"]
            figures += [Figure(f"{tag}: partitioned by id, insert p50", p["insert_p50"], "ms", "plain table",
                               r["insert_p50"]),
                        Figure(f"{tag}: partitioned by id, insert p99", p["insert_p99"], "ms", "plain table",
                               r["insert_p99"]),
                        Figure(f"{tag}: partitioned, DETACH + DROP of 100k rows", p["detach_drop_s"], "s",
                               "batched delete of 100k", r["retire_100k_s"])]
    notes = "; ".join(f"{r['n']:,} rows: table {r['table_mib']:,.0f} MiB + indexes {r['index_mib']:,.0f} MiB"
                      for r in runs)
    emit("outbox_growth", "Outbox growth: write path, relay claim and retention cost against table size",
         "python -m bench outbox_growth  (AETHER_BENCH_GROWTH_ROWS=1000000,10000000 for more sizes)", figures,
         notes=notes + ". Inserts: one client, back-to-back single-row outbox inserts, each its own commit with "
               "synchronous_commit off (the statement's cost without the WAL flush), alternating 0.5 s chunks "
               "between the tables compared.")


if __name__ == "__main__":
    main()
