"""What the relay benchmarks share: a dedicated, migrated database and a dedicated topic on the
running stack, so that a benchmark never touches the developer's data or another run's."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient

from aether_platform.db_url import libpq_url, with_database
from aether_platform.settings import get_settings
from aether_platform.topics import TopicSpec, declared_topic, ensure_topic

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def bench_database(name: str):
    base = get_settings().database_url
    admin = libpq_url(with_database(base, "postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(base, name)
    r = subprocess.run([sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
                       cwd=REPO, env={**os.environ, "DATABASE_URL": url, "AETHER_ALEMBIC_QUIET": "1"},
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"migrating {name} failed: {r.stderr}")
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def bench_topic(prefix: str):
    bootstrap = get_settings().kafka_bootstrap_servers
    spec = declared_topic()
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    ensure_topic(bootstrap, TopicSpec(name=name, partitions=spec.partitions,
                                      replication_factor=spec.replication_factor, configs=spec.configs))
    try:
        yield bootstrap, name
    finally:
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics([name])
