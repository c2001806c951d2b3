"""The whole path on real servers: API → PostgreSQL outbox → relay → Kafka → SSE → browser.
The module gets a database and a topic of its own, so counts are exact."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from aether_platform.topics import TopicSpec, ensure_topic
from tests.conftest import REPO, RUN_ID, ApiServer, drop_database, migrated_database, read_to_end, stop_group


class RelayProcess:
    """`python -m aether_platform.relay` in streaming mode, as the Dagster job runs it."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_path = log_dir / f"relay-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RelayProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "aether_platform.relay", "--mode", "streaming",
                                      "--lifetime", "900"], cwd=REPO, env={**os.environ, **self.env},
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def stop(self, sig: int = 15) -> None:
        stop_group(self.proc, sig, timeout=20)
        self.proc = None


class TopicReader:
    """Reads every record of the topic from the beginning (assign(), no group offsets)."""

    def __init__(self, bootstrap: str, topic: str):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-{uuid.uuid4().hex[:6]}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        self.topic = topic
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
        self.records: list = []

    def poll_until(self, predicate, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(500, timeout=0.2):
                if msg.error() is None:
                    self.records.append(msg)
            if predicate(self.records):
                return self.records
        raise AssertionError(f"timed out after {timeout}s; {len(self.records)} records read")

    def read_to_end(self, timeout: float = 60.0) -> list:
        """Read on to every partition's current end (tests.conftest.read_to_end): what duplicate
        counts need. Returns every record read so far."""
        self.records.extend(read_to_end(self.consumer, timeout))
        return self.records

    def ends(self) -> list[int]:
        """Each partition's high watermark, in partition order."""
        return [self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1] for p in range(3)]

    def event_ids(self) -> Counter:
        return Counter(dict(m.headers())["event_id"].decode() for m in self.records)

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture(scope="module")
def e2e_env(base_database_url, kafka_bootstrap):
    suffix = f"{RUN_ID}_{uuid.uuid4().hex[:4]}"
    db_name = f"aether_e2e_{suffix}"
    url = migrated_database(base_database_url, db_name)
    topic = f"aetherlink.events.e2e-{suffix}"
    ensure_topic(kafka_bootstrap, TopicSpec(name=topic, partitions=3, replication_factor=1))
    yield {"DATABASE_URL": url, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "AETHER_TOPIC": topic,
           "PYTHONPATH": str(REPO), "AETHER_SSE_KEEPALIVE_SECONDS": "2"}
    drop_database(base_database_url, db_name)
    AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics([topic])


@pytest.fixture(scope="module")
def e2e_api(e2e_env, tmp_path_factory):
    server = ApiServer(e2e_env, tmp_path_factory.mktemp("e2e-api"), workers=2).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def e2e_relay(e2e_env, tmp_path_factory):
    relay = RelayProcess(e2e_env, tmp_path_factory.mktemp("e2e-relay")).start()
    yield relay
    relay.stop()


@pytest.fixture
def topic_reader(e2e_env):
    reader = TopicReader(e2e_env["KAFKA_BOOTSTRAP_SERVERS"], e2e_env["AETHER_TOPIC"])
    yield reader
    reader.close()


def report(name: str, **counts) -> None:
    """Each fault test prints its counts (visible with -s and in the CI log on failure)."""
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
