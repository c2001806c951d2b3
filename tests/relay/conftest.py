"""Relay test helpers: write outbox rows as the API would, and read back what reached Kafka."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from aether_platform import outbox
from aether_platform.relay import RelayConfig
from tests.conftest import REPO, read_to_end


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: str
    event_id: str
    headers: dict[str, str]
    value: bytes


def write_events(conn: psycopg.Connection, tenant: str, keys: list[uuid.UUID], per_key: int,
                 payload_pad: int = 0) -> list[outbox.OutboxEvent]:
    """per_key JobUpdated events for each key, interleaved across keys (k1, k2, …, k1, k2, …), in
    one transaction, so ids interleave the way concurrent API requests would."""
    events = []
    for seq in range(per_key):
        for key in keys:
            events.append(outbox.make_event("JobUpdated", "job", uuid.UUID(tenant), key,
                                            {"Title": "x" * payload_pad, "Status": "Open", "Seq": seq}))
    with conn.cursor() as cur:
        cur.executemany(outbox.INSERT_SQL, [e.params() for e in events])
    return events


def consume(bootstrap: str, topic: str, event_ids: set[str], timeout: float = 60.0) -> list[Record]:
    """Every record of `topic` whose event_id header is in `event_ids`, in partition order, read
    from the beginning to each partition's end (tests.conftest.read_to_end), so that a re-sent
    copy is there to count however late it came. Call it once the events are published."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"relay-test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    found: list[Record] = []
    try:
        for m in read_to_end(consumer, timeout):
            headers = {k: v.decode() for k, v in (m.headers() or [])}
            eid = headers.get("event_id")
            if eid in event_ids:
                found.append(Record(m.partition(), m.offset(), m.key().decode(), eid, headers, m.value()))
    finally:
        consumer.close()
    return found


def assert_per_key_order(records: list[Record], events: list[outbox.OutboxEvent]) -> None:
    """Each key's first deliveries follow its write order; a re-sent record (at-least-once) may
    repeat an event id but never put an older event after a newer one it had not yet sent."""
    position = {str(e.event_id): i for i, e in enumerate(events)}
    by_key: dict[str, list[Record]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(r.key, []).append(r)
    for key, recs in by_key.items():
        assert len({r.partition for r in recs}) == 1, f"key {key} spread over partitions"
        first_seen: list[int] = []
        for r in recs:
            if position[r.event_id] not in first_seen:
                first_seen.append(position[r.event_id])
        assert first_seen == sorted(first_seen), f"key {key} out of order"


@pytest.fixture
def outbox_db(db):
    """The session database with an empty outbox and relay status, for one relay test."""
    db.execute("TRUNCATE outbox_events, relay_status")
    return db


@pytest.fixture
def relay_config(platform_env, outbox_db) -> RelayConfig:
    return RelayConfig.from_env(retry_backoff_seconds=0.01, retry_backoff_cap_seconds=0.05,
                                transient_backoff_seconds=0.2, heartbeat_seconds=0.5, observe_seconds=0.5)


def relay_process(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "aether_platform.relay", *args], cwd=REPO,
                            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc
