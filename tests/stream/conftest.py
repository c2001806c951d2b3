"""Fixtures for the live stream: a topic of its own (some tests delete records from it), an API
process bound to it with short timers, and a producer that writes records the way the relay does."""
from __future__ import annotations

import time
import uuid

import orjson
import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from aether_platform.outbox import make_event
from aether_platform.topics import TopicSpec, ensure_topic
from tests.conftest import RUN_ID, ApiServer

CORS_ORIGIN = "http://command-center.example"
MAX_CLIENTS = 12


@pytest.fixture(scope="session")
def stream_topic(kafka_bootstrap) -> str:
    name = f"aetherlink.events.stream-test-{RUN_ID}"
    ensure_topic(kafka_bootstrap, TopicSpec(name=name, partitions=3, replication_factor=1))
    yield name
    AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics([name])


@pytest.fixture(scope="session")
def stream_env(platform_env, stream_topic) -> dict[str, str]:
    return {**platform_env, "AETHER_TOPIC": stream_topic,
            "AETHER_SSE_KEEPALIVE_SECONDS": "1", "AETHER_SSE_RETRY_MS": "500",
            "AETHER_SSE_SEND_TIMEOUT_SECONDS": "1.5", "AETHER_SSE_RING_EVENTS": "300",
            "AETHER_SSE_PREFILL_EVENTS": "100", "AETHER_SSE_CORS_ORIGINS": CORS_ORIGIN,
            "AETHER_SSE_MAX_CLIENTS": str(MAX_CLIENTS)}


@pytest.fixture(scope="session")
def stream_api(stream_env, tmp_path_factory) -> ApiServer:
    server = ApiServer(stream_env, tmp_path_factory.mktemp("stream-api")).start()
    yield server
    server.close()


class EventProducer:
    """Writes records shaped like the relay's: key = aggregate id, PascalCase JSON value,
    headers event_id, event_type, tenant_id, occurred_at."""

    def __init__(self, bootstrap: str, topic: str):
        self.topic = topic
        self.bootstrap = bootstrap
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "enable.idempotence": True})

    def job(self, tenant: str, event_type: str = "JobCreated", title: str = "job", partition: int | None = None,
            event_id: str | None = None, job_id: str | None = None, pad: int = 0) -> dict:
        fields = {"Title": title, "Status": "Open"}
        if pad:
            fields["Notes"] = "x" * pad
        ev = make_event(event_type, "job", uuid.UUID(tenant), uuid.UUID(job_id) if job_id else uuid.uuid4(), fields)
        eid = event_id or str(ev.event_id)
        headers = [("event_id", eid.encode()), ("event_type", event_type.encode()),
                   ("tenant_id", tenant.encode()), ("occurred_at", ev.payload["Ts"].encode())]
        kwargs = {"partition": partition} if partition is not None else {}
        self.producer.produce(self.topic, key=ev.aggregate_key.encode(), value=orjson.dumps(ev.payload),
                              headers=headers, **kwargs)
        return {**ev.payload, "event_id": eid}

    def flush(self) -> None:
        assert self.producer.flush(15) == 0, "records not delivered"

    def watermarks(self) -> list[tuple[int, int]]:
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "stream-test-probe"})
        try:
            return [c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10) for p in range(3)]
        finally:
            c.close()

    def delete_before(self, partition: int, offset: int) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        fut = admin.delete_records([TopicPartition(self.topic, partition, offset)])
        for f in fut.values():
            f.result(timeout=15)


@pytest.fixture(scope="session")
def events(kafka_bootstrap, stream_topic) -> EventProducer:
    return EventProducer(kafka_bootstrap, stream_topic)


def mine(client, tenant: str) -> list[dict]:
    return [e for e in client.events() if (e["value"] or {}).get("TenantId") == tenant]


def stream_at(client, ends: list[int]) -> bool:
    """The SSE client's cursor has passed every partition's `ends` offset (high watermarks): id
    frames carry it past what a filter drops, so every record before the ends went by it. What
    a test waits for before asserting that something did NOT arrive."""
    from api.stream.cursor import decode

    offsets = list(decode(client.last_id()).offsets)
    return len(offsets) == len(ends) and all(o >= e for o, e in zip(offsets, ends))


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
