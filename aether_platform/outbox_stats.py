"""How the outbox stands: pending events, the oldest pending event's age, dead letters, and the
relays' heartbeats and totals. Each is defined once here, as SQL, and read by two callers:
- the relay's observations and the Dagster asset checks, through outbox_stats() below;
- the API's /metrics, for Prometheus and the SLO alerts (api/outbox_metrics.py), which runs the
  same statements one at a time, each under a statement timeout, so one slow query costs only itself.

Definitions:
- pending: not published and not dead-lettered.
- the oldest pending event: the pending row with the lowest id, i.e. the next one the relay will
  publish (it claims in id order), found through the partial index ix_outbox_events_pending; its
  age is the time since its occurred_at. Nothing pending: no age (None), which /metrics reports as 0.
- dead-lettered: dead_lettered_at is set (a requeue clears it; such a row is never published).
"""
from __future__ import annotations

from dataclasses import dataclass

import psycopg

PENDING_COUNT_SQL = "SELECT count(*) FROM outbox_events WHERE published_at IS NULL AND dead_lettered_at IS NULL"
OLDEST_PENDING_AGE_SQL = """
SELECT extract(epoch FROM now() - occurred_at)::float8 FROM outbox_events
WHERE published_at IS NULL AND dead_lettered_at IS NULL ORDER BY id LIMIT 1"""
# Served by the partial index ix_outbox_events_dead_lettered (migration 0006); /metrics runs it last.
DEAD_LETTERED_SQL = "SELECT count(*) FROM outbox_events WHERE dead_lettered_at IS NOT NULL"
RELAY_STATUS_SQL = """
SELECT relay, extract(epoch FROM heartbeat_at)::float8, published_total, attempts_total,
       failures_total, dead_lettered_total
FROM relay_status ORDER BY relay"""


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    oldest_pending_age_seconds: float | None  # None: nothing pending
    dead_lettered: int


def outbox_stats(conn: psycopg.Connection) -> OutboxStats:
    oldest = conn.execute(OLDEST_PENDING_AGE_SQL).fetchone()
    return OutboxStats(pending=conn.execute(PENDING_COUNT_SQL).fetchone()[0],
                       oldest_pending_age_seconds=None if oldest is None else max(0.0, oldest[0]),
                       dead_lettered=conn.execute(DEAD_LETTERED_SQL).fetchone()[0])
