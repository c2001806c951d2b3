"""Outbox retention: published outbox rows older than the retention period are deleted, in small
batches, so that outbox_events holds a bounded window of history instead of every event ever
written. Plain Python; the Dagster asset in aether_platform.dagster_defs.outbox_retention runs it
on a schedule, and `python -m aether_platform.retention` runs it by hand (or from cron).

Why delete, and why in batches rather than a partitioned table (BENCHMARKS.md, "Outbox growth
and retention", has the measurements): a batch finds its rows through the seed's
(published_at, occurred_at) index, so retiring N rows costs N index entries and heap tuples,
whatever the table's size. Partitioning by id would make the drop free, but PostgreSQL cannot
keep the table-wide UNIQUE (event_id) constraint on a table partitioned by id, and readers would
see a partitioned table instead of the one they know. Nothing is archived: the event is on the
Kafka topic, whose retention is the same 7 days.

Guarantees:
- Only rows with published_at before the cutoff (now − retention, fixed at the start of a run)
  and no dead-letter mark are deleted. Pending and dead-lettered rows are never touched.
- A batch is one short transaction of at most batch_size rows, locked with FOR UPDATE SKIP
  LOCKED: it never waits for, and never blocks, the API's inserts or the relay's claim and mark
  (those only lock unpublished rows). Two runs at once split the work; neither blocks.
- Idempotent: a second run finds nothing left before the cutoff and deletes nothing.
- Retention off (AETHER_OUTBOX_RETENTION_SECONDS=0 or "off") deletes nothing.

Settings (environment):
- AETHER_OUTBOX_RETENTION_SECONDS: how long a published row is kept (default 604800 = 7 days,
  the topic's retention.ms); 0 or "off" turns retention off.
- AETHER_OUTBOX_RETENTION_SLACK_SECONDS: how far behind retention may fall before the asset
  check fails (default 3600: four missed 15-minute schedule ticks).
- AETHER_OUTBOX_RETENTION_BATCH_SIZE (default 5000) and AETHER_OUTBOX_RETENTION_MAX_SECONDS
  (default 600, the time budget of one run; the next run continues).
- AETHER_OUTBOX_RETENTION_VACUUM (default on): a run that deleted rows ends with a plain VACUUM
  (ANALYZE) of outbox_events, so the space of the deleted rows is reused by the next inserts at
  once instead of after autovacuum's default 20 % threshold (60 million dead rows at 7 days of
  500 events/s), and the planner's statistics stay current.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime

import psycopg
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aether_platform.db_url import libpq_url

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600

# Keyset walk over IX_outbox_events_published_occurred: each batch starts where the previous one
# ended, so it never re-walks the index entries of rows already deleted (they stay in the index
# until vacuum, and scanning them from the head each time is what makes naive queue deletes slow).
RETIRE_BATCH_SQL = """
    WITH doomed AS (
        SELECT id, published_at FROM outbox_events
        WHERE published_at >= %(after)s AND published_at < %(cutoff)s AND dead_lettered_at IS NULL
        ORDER BY published_at
        LIMIT %(batch)s
        FOR UPDATE SKIP LOCKED),
    gone AS (DELETE FROM outbox_events o USING doomed d WHERE o.id = d.id RETURNING d.published_at)
    SELECT count(*), max(published_at) FROM gone
"""

CUTOFF_SQL = "SELECT now() - make_interval(secs => %s)"

# Bounded count: a table far behind should not cost a full index scan to report it.
PAST_SQL = """
    SELECT count(*) FROM (
        SELECT 1 FROM outbox_events
        WHERE published_at < now() - make_interval(secs => %s) AND dead_lettered_at IS NULL
        LIMIT %s) t
"""

STATE_SQL = """
    SELECT pg_table_size('outbox_events'), pg_indexes_size('outbox_events'),
           (SELECT reltuples::bigint FROM pg_class WHERE oid = 'outbox_events'::regclass),
           (SELECT min(published_at) FROM outbox_events),
           extract(epoch FROM now() - (SELECT min(published_at) FROM outbox_events))
"""

# Below this estimate the exact count is cheap enough to report instead.
EXACT_COUNT_BELOW = 1_000_000
PAST_COUNT_CAP = 10_000_000
EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


class RetentionSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # None = off.
    retention_seconds: int | None = Field(DEFAULT_RETENTION_SECONDS, alias="AETHER_OUTBOX_RETENTION_SECONDS", description=(
        "How long a published outbox row is kept (the topic's retention); 0 or `off` keeps them all."))
    slack_seconds: int = Field(3600, alias="AETHER_OUTBOX_RETENTION_SLACK_SECONDS", description=(
        "How far behind retention may fall before the asset check fails."))
    batch_size: int = Field(5000, alias="AETHER_OUTBOX_RETENTION_BATCH_SIZE", gt=0, description=(
        "Rows deleted per batch."))
    max_seconds: float = Field(600.0, alias="AETHER_OUTBOX_RETENTION_MAX_SECONDS", gt=0, description=(
        "Time budget of one retention run; the next run continues."))
    vacuum: bool = Field(True, alias="AETHER_OUTBOX_RETENTION_VACUUM", description=(
        "A run that deleted rows ends with VACUUM (ANALYZE) of outbox_events, so the space is reused at once."))

    @field_validator("retention_seconds", mode="before")
    @classmethod
    def _off(cls, v):
        if v is None or isinstance(v, int):
            seconds = v
        elif str(v).strip().lower() in ("off", ""):
            return None
        else:
            try:
                seconds = int(str(v).strip())
            except ValueError:
                raise ValueError("must be a whole number of seconds, 0 or off") from None
        if seconds is not None and seconds < 0:
            raise ValueError("must be a whole number of seconds, 0 or off")
        return seconds or None


def settings_error(exc: ValueError) -> str:
    """One line naming the variable and what is wrong with it, from a pydantic ValidationError."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        field = e["loc"][0] if e["loc"] else "settings"  # the variable's name (the alias)
        return f"{field}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})"
    return str(exc).splitlines()[0]


@dataclass(frozen=True)
class OutboxState:
    table_bytes: int
    index_bytes: int
    rows: int
    rows_exact: bool
    rows_past_retention: int
    oldest_published_at: str | None
    oldest_published_age_seconds: float | None


@dataclass(frozen=True)
class RetireResult:
    retired: int
    batches: int
    seconds: float
    cutoff: str | None
    finished: bool  # False when the time budget ran out with rows still before the cutoff


def retire_published(conn: psycopg.Connection, retention_seconds: int | None, batch_size: int = 5000,
                     max_seconds: float = 600.0, pause_seconds: float = 0.0) -> RetireResult:
    """Delete published, not dead-lettered rows older than retention_seconds, batch by batch
    (each its own transaction, on an autocommit connection), until none is left or max_seconds
    ran out. None or 0 retention: nothing is deleted."""
    started = time.monotonic()
    if not retention_seconds:
        return RetireResult(0, 0, 0.0, None, True)
    cutoff = conn.execute(CUTOFF_SQL, (retention_seconds,)).fetchone()[0]
    after, retired, batches, finished = EPOCH, 0, 0, False
    while time.monotonic() - started < max_seconds:
        with conn.transaction():
            n, last = conn.execute(RETIRE_BATCH_SQL, {"after": after, "cutoff": cutoff, "batch": batch_size}).fetchone()
        batches += 1
        retired += n
        if n < batch_size:
            finished = True
            break
        after = last
        if pause_seconds:
            time.sleep(pause_seconds)
    return RetireResult(retired, batches, round(time.monotonic() - started, 3), cutoff.isoformat(), finished)


def vacuum(conn: psycopg.Connection) -> float:
    """VACUUM (ANALYZE) outbox_events on an autocommit connection; returns its seconds. Plain
    VACUUM takes no lock that the API or the relay wait for (SHARE UPDATE EXCLUSIVE). Its heap
    pass visits only pages changed since the last one (the visibility map skips the rest); it
    scans the indexes only when more than 2 % of the pages hold dead rows (PostgreSQL 14+)."""
    started = time.monotonic()
    conn.execute("VACUUM (ANALYZE) outbox_events")
    return round(time.monotonic() - started, 3)


def outbox_state(conn: psycopg.Connection, retention_seconds: int | None) -> OutboxState:
    """Sizes, row count (exact when small, else the planner's estimate), rows still past
    retention (0 when retention is off) and the oldest published row."""
    table_bytes, index_bytes, estimate, oldest, age = conn.execute(STATE_SQL).fetchone()
    exact = estimate < EXACT_COUNT_BELOW  # -1: never analyzed, so small
    rows = conn.execute("SELECT count(*) FROM outbox_events").fetchone()[0] if exact else estimate
    past = conn.execute(PAST_SQL, (retention_seconds, PAST_COUNT_CAP)).fetchone()[0] if retention_seconds else 0
    return OutboxState(table_bytes=table_bytes, index_bytes=index_bytes, rows=rows, rows_exact=exact,
                       rows_past_retention=past, oldest_published_at=oldest.isoformat() if oldest else None,
                       oldest_published_age_seconds=None if age is None else round(float(age), 3))


def rows_behind(conn: psycopg.Connection, retention_seconds: int | None, slack_seconds: int) -> int:
    """Rows that retention should have retired more than slack_seconds ago (capped count)."""
    if not retention_seconds:
        return 0
    return conn.execute(PAST_SQL, (retention_seconds + slack_seconds, PAST_COUNT_CAP)).fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    try:
        s = RetentionSettings()
    except ValueError as exc:
        print(f"python -m aether_platform.retention: {settings_error(exc)}", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="python -m aether_platform.retention",
                                description="Delete published outbox rows past retention (one run, or every N s).")
    p.add_argument("--retention-seconds", type=int, default=s.retention_seconds or 0, help="0 = off")
    p.add_argument("--batch-size", type=int, default=s.batch_size)
    p.add_argument("--max-seconds", type=float, default=s.max_seconds)
    p.add_argument("--every", type=float, default=0.0, help="repeat every this many seconds (0: run once)")
    p.add_argument("--no-vacuum", dest="vacuum", action="store_false", default=s.vacuum,
                   help="skip the VACUUM after a run that deleted rows")
    args = p.parse_args(argv)
    from aether_platform.settings import get_settings

    with psycopg.connect(libpq_url(get_settings().database_url), autocommit=True) as conn:
        while True:
            r = retire_published(conn, args.retention_seconds, args.batch_size, args.max_seconds)
            vacuum_seconds = vacuum(conn) if args.vacuum and r.retired else 0.0
            print(json.dumps({**asdict(r), "vacuum_seconds": vacuum_seconds}), flush=True)
            if not args.every:
                return 0
            time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
