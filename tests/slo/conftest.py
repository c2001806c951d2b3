"""A database of the SLO tests' own: the rows they plant (relay status, outbox events) must not
meet another test's relay, and another relay's rows must not change what these tests measure."""
from __future__ import annotations

import psycopg
import pytest

from aether_platform.db_url import libpq_url
from tests.conftest import RUN_ID, drop_database, migrated_database


@pytest.fixture(scope="package")
def slo_db(base_database_url):
    name = f"aether_slo_{RUN_ID}"
    yield migrated_database(base_database_url, name)
    drop_database(base_database_url, name)


@pytest.fixture
def slo_conn(slo_db):
    with psycopg.connect(libpq_url(slo_db), autocommit=True) as conn:
        yield conn
