"""Dagster's storage on the stack's PostgreSQL, through the URL the stack gives Dagster.

Regression: with a bare postgresql:// URL SQLAlchemy 2.1 picks psycopg 3, whose server-side
binding breaks dagster-postgres' `NOTIFY run_events, %(id)s`, and no run ever starts."""
from __future__ import annotations

import dagster as dg

from aether_platform.db_url import with_database
from devstack import stack
from tests.conftest import RUN_ID, create_database, drop_database


def test_a_run_completes_on_dagster_postgres_storage(base_database_url, monkeypatch):
    name = f"aether_dagster_{RUN_ID}"
    create_database(base_database_url, name)
    try:
        monkeypatch.setenv("DAGSTER_PG_URL", with_database(base_database_url, name))
        url = stack.Config().dagster_pg_url
        assert url.startswith("postgresql+psycopg2://")

        @dg.asset
        def probe() -> int:
            return 1

        with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
            result = dg.materialize([probe], instance=instance)
            assert result.success
            assert instance.get_latest_materialization_event(dg.AssetKey("probe")) is not None
    finally:
        drop_database(base_database_url, name)
