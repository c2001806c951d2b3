"""The relay/outbox exporter: what it reads from PostgreSQL, and that a scrape survives a database
that is down or missing its tables."""
from __future__ import annotations

import asyncio
import uuid

from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool

from aether_platform import slo_spec as spec
from aether_platform.db_url import libpq_url
from api import outbox_metrics


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def _scrape(dsn: str) -> dict:
    async def go():
        pool = AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False, timeout=1,
                                   kwargs={"connect_timeout": 1})
        await pool.open(wait=False)
        try:
            return outbox_metrics.exposition(await outbox_metrics.scrape(pool))
        finally:
            await pool.close(timeout=1)
    return _samples(asyncio.run(go()))


def test_exports_relay_status_and_backlog(slo_conn, slo_db):
    slo_conn.execute("DELETE FROM outbox_events")   # this package's own database: start from an empty outbox
    relay = f"test-relay-{uuid.uuid4().hex[:6]}"
    slo_conn.execute("INSERT INTO relay_status (relay, heartbeat_at, published_total, attempts_total, failures_total,"
               " dead_lettered_total) VALUES (%s, to_timestamp(1700000000), 7, 9, 2, 1)", (relay,))
    tenant = uuid.uuid4()
    for dead in (False, False, True):
        slo_conn.execute(
            "INSERT INTO outbox_events (tenant_id, type, payload, occurred_at, event_id, aggregate_type,"
            " aggregate_key, dead_lettered_at) VALUES (%s, 'JobCreated', '{}', now() - interval '90 seconds',"
            " %s, 'job', %s, CASE WHEN %s THEN now() END)", (tenant, uuid.uuid4(), str(uuid.uuid4()), dead))
    try:
        m = _scrape(libpq_url(slo_db))
        label = (("relay", relay),)
        assert m[(spec.RELAY_HEARTBEAT, label)] == 1700000000
        assert m[(spec.RELAY_PUBLISHED, label)] == 7 and m[(spec.RELAY_ATTEMPTS, label)] == 9
        assert m[(spec.RELAY_FAILURES, label)] == 2 and m[(spec.RELAY_DEAD_LETTERED, label)] == 1
        assert m[(spec.OUTBOX_PENDING, ())] == 2 and m[(spec.OUTBOX_DEAD_LETTERED, ())] == 1
        assert m[(spec.OUTBOX_OLDEST_PENDING_AGE, ())] >= 89
        assert m[(spec.OUTBOX_METRICS_UP, ())] == 1
    finally:
        slo_conn.execute("DELETE FROM relay_status WHERE relay = %s", (relay,))
        slo_conn.execute("DELETE FROM outbox_events WHERE tenant_id = %s", (tenant,))


def test_database_down_still_answers_with_up_zero():
    from tests.conftest import refused_port

    with refused_port() as nowhere:
        m = _scrape(f"postgresql://aether@127.0.0.1:{nowhere}/crm")
    assert m == {(spec.OUTBOX_METRICS_UP, ()): 0}


def test_missing_tables_export_what_they_can(base_database_url):
    # The `postgres` maintenance database has no outbox: every query fails, the scrape does not.
    from aether_platform.db_url import with_database

    m = _scrape(libpq_url(with_database(base_database_url, "postgres")))
    assert m == {(spec.OUTBOX_METRICS_UP, ()): 0}


def test_no_pool_yet():
    assert _samples(outbox_metrics.exposition(asyncio.run(outbox_metrics.scrape(None)))) == {
        (spec.OUTBOX_METRICS_UP, ()): 0}
