"""What the relay benchmarks share: a dedicated, migrated database and a dedicated topic on the
running stack, so that a benchmark never touches the developer's data or another run's; and a
broker warm-up."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from aether_platform.db_url import libpq_url, with_database
from aether_platform.settings import get_settings
from aether_platform.kafka_client import silent_logger
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


def warm_up_broker(bootstrap: str, topic: str, seconds: float) -> int:
    """Small produce requests and fetches for `seconds`, the request mix the latency benchmarks
    measure, so that they measure a broker in its steady state. A freshly started broker's JIT
    spends 3-5x the CPU on the same traffic for its first minutes (measured: 0.35-0.52 cores
    instead of 0.14 at 500 events/s), which on 2 cores starves the rest of the pipeline.
    Returns the number of produce requests made."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 0, "logger": silent_logger("aether.bench.warmup")})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-warm-up-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 50,
                         "logger": silent_logger("aether.bench.warmup")})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, -1) for p in partitions])  # -1: from the end
    requests = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        producer.produce(topic, b"{}", str(requests))
        producer.flush(10)  # one record, one produce request
        consumer.poll(0)
        requests += 1
    consumer.close()
    return requests
