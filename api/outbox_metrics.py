"""Relay and outbox metrics, read from PostgreSQL at scrape time (the statements, and what each
figure means, are aether_platform.outbox_stats's).

The relay runs inside short-lived Dagster runs, so no long-lived process holds its counters: it
keeps its heartbeat and cumulative totals in `relay_status`, and the API's /metrics exports them,
with the outbox backlog, for Prometheus. A scrape never fails because of the database: each query
has a short statement timeout, whatever could not be read is left out, and
aether_outbox_metrics_up says whether everything was read.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from aether_platform import slo_spec as names
from aether_platform.outbox_stats import (DEAD_LETTERED_SQL, OLDEST_PENDING_AGE_SQL, PENDING_COUNT_SQL,
                                          RELAY_STATUS_SQL)

log = logging.getLogger("aether.api.outbox_metrics")

STATEMENT_TIMEOUT_MS = 500
POOL_TIMEOUT_S = 1.0
TOTAL_TIMEOUT_S = 2.0

@dataclass
class RelayRow:
    relay: str
    heartbeat: float
    published: int
    attempts: int
    failures: int
    dead_lettered: int


@dataclass
class Snapshot:
    relays: list[RelayRow] = field(default_factory=list)
    pending: int | None = None
    oldest_pending_age: float | None = None   # 0 when nothing is pending
    dead_lettered: int | None = None
    complete: bool = False


class OutboxCollector:
    """A prometheus_client collector over one snapshot (taken per scrape, see `scrape`)."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self):
        s = self.snapshot
        heartbeat = GaugeMetricFamily(names.RELAY_HEARTBEAT, "Last relay heartbeat, Unix time", labels=["relay"])
        counters = [
            (CounterMetricFamily(names.RELAY_PUBLISHED, "Outbox events published to Kafka", labels=["relay"]),
             "published"),
            (CounterMetricFamily(names.RELAY_ATTEMPTS, "Publish attempts, successful or not", labels=["relay"]),
             "attempts"),
            (CounterMetricFamily(names.RELAY_FAILURES, "Failed publish attempts", labels=["relay"]), "failures"),
            (CounterMetricFamily(names.RELAY_DEAD_LETTERED, "Events dead-lettered after their last retry",
                                 labels=["relay"]), "dead_lettered"),
        ]
        for row in s.relays:
            heartbeat.add_metric([row.relay], row.heartbeat)
            for family, attr in counters:
                family.add_metric([row.relay], getattr(row, attr))
        yield heartbeat
        for family, _ in counters:
            yield family
        for name, doc, value in (
            (names.OUTBOX_PENDING, "Outbox events waiting to be published", s.pending),
            (names.OUTBOX_OLDEST_PENDING_AGE, "Age of the oldest pending outbox event (0: none pending)",
             s.oldest_pending_age),
            (names.OUTBOX_DEAD_LETTERED, "Dead-lettered outbox events", s.dead_lettered),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(names.OUTBOX_METRICS_UP, "1 if every relay and outbox query of this scrape succeeded",
                                value=1 if s.complete else 0)


async def _query(conn, sql: str):
    # A savepoint per query: one timeout must not abort the others' transaction.
    try:
        async with conn.transaction():
            cur = await conn.execute(sql)
            return await cur.fetchall()
    except psycopg.Error as exc:
        log.warning("outbox metrics query failed: %s", exc)
        return None


async def _read(pool, snapshot: Snapshot) -> None:
    async with pool.connection(timeout=POOL_TIMEOUT_S) as conn:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            await conn.execute("SET LOCAL transaction_read_only = on")
            relays = await _query(conn, RELAY_STATUS_SQL)
            if relays is not None:
                snapshot.relays = [RelayRow(*r) for r in relays]
            pending = await _query(conn, PENDING_COUNT_SQL)
            if pending is not None:
                snapshot.pending = pending[0][0]
            oldest = await _query(conn, OLDEST_PENDING_AGE_SQL)
            if oldest is not None:
                snapshot.oldest_pending_age = max(0.0, oldest[0][0]) if oldest else 0.0
            dead = await _query(conn, DEAD_LETTERED_SQL)
            if dead is not None:
                snapshot.dead_lettered = dead[0][0]
            snapshot.complete = None not in (relays, pending, oldest, dead)


async def scrape(pool) -> Snapshot:
    """Everything readable within TOTAL_TIMEOUT_S; `pool` may be None (app not started)."""
    snapshot = Snapshot()
    if pool is None:
        return snapshot
    try:
        await asyncio.wait_for(_read(pool, snapshot), TOTAL_TIMEOUT_S)
    except Exception as exc:   # pool timeout, connection refused, cancelled: the scrape goes on
        log.warning("outbox metrics unavailable: %r", exc)
        snapshot.complete = False
    return snapshot


def exposition(snapshot: Snapshot) -> bytes:
    """Text exposition of one snapshot. A registry of its own per scrape, so the collector is
    never registered globally and the same code serves single- and multi-process mode."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxCollector(snapshot))
    return generate_latest(registry)
