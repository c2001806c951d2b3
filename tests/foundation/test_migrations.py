"""Alembic migrations on a real PostgreSQL: up, down, and agreement with the models."""
from __future__ import annotations

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from aether_platform.db_url import libpq_url, sqlalchemy_url
from aether_platform.models import metadata
from tests.conftest import RUN_ID, alembic, create_database, drop_database


@pytest.fixture
def scratch_db(base_database_url):
    name = f"aether_mig_{RUN_ID}"
    url = create_database(base_database_url, name)
    yield url
    drop_database(base_database_url, name)


def _tables(url: str) -> set[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows} - {"alembic_version"}


def test_upgrade_downgrade_upgrade(scratch_db):
    up = alembic(scratch_db, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert {"outbox_events", "idempotency_keys", "accounts", "contacts", "jobs", "relay_status"} <= _tables(scratch_db)

    down = alembic(scratch_db, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert _tables(scratch_db) == set()

    again = alembic(scratch_db, "upgrade", "head")
    assert again.returncode == 0, again.stderr


def test_models_and_migrations_agree(database_url):
    engine = create_engine(sqlalchemy_url(database_url))
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_seed_columns_and_index_names_are_exact(database_url):
    with psycopg.connect(libpq_url(database_url)) as conn:
        cols = dict(conn.execute(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
            " WHERE table_name IN ('outbox_events', 'idempotency_keys')").fetchall())
        indexes = {r[0]: r[1] for r in conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('outbox_events', 'idempotency_keys')")}
    expected = {
        "outbox_events.id": "bigint", "outbox_events.tenant_id": "uuid", "outbox_events.type": "character varying",
        "outbox_events.payload": "jsonb", "outbox_events.occurred_at": "timestamp with time zone",
        "outbox_events.published_at": "timestamp with time zone", "outbox_events.retry_count": "integer",
        "outbox_events.last_error": "text",
        "idempotency_keys.id": "bigint", "idempotency_keys.tenant_id": "uuid",
        "idempotency_keys.key": "character varying", "idempotency_keys.request_path": "character varying",
        "idempotency_keys.request_method": "character varying", "idempotency_keys.status_code": "integer",
        "idempotency_keys.response_body": "text", "idempotency_keys.created_at": "timestamp with time zone",
        "idempotency_keys.expires_at": "timestamp with time zone",
    }
    for col, typ in expected.items():
        assert cols.get(col) == typ, col
    # The seed's name and columns; migration 0008 made it partial.
    assert ("(published_at, occurred_at) WHERE (published_at IS NOT NULL)"
            in indexes["IX_outbox_events_published_occurred"])
    assert "(tenant_id)" in indexes["IX_outbox_events_tenant"]
    assert indexes["IX_idempotency_keys_tenant_key"].startswith("CREATE UNIQUE INDEX")
    assert "(tenant_id, key)" in indexes["IX_idempotency_keys_tenant_key"]
    assert "(expires_at)" in indexes["IX_idempotency_keys_expires"]
    assert "WHERE ((published_at IS NULL) AND (dead_lettered_at IS NULL))" in indexes["ix_outbox_events_pending"]
