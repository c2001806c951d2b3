"""Kafka is a real broker, reachable through the AdminClient; the topic is provisioned from code."""
from __future__ import annotations

import dataclasses
import uuid

from confluent_kafka.admin import AdminClient

from aether_platform.topics import TopicSpec, declared_topic, describe_topic, drift, ensure_topic


def test_broker_reachable_through_admin_client(kafka_bootstrap):
    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    assert len(md.brokers) == 1


def test_stack_provisioned_the_contract_topic(kafka_bootstrap):
    spec = declared_topic()
    state = describe_topic(kafka_bootstrap, "aetherlink.events")
    assert state.exists and state.partitions == 3
    assert drift(dataclasses.replace(spec, name="aetherlink.events"), state) == []


def test_ensure_topic_is_idempotent_and_drift_is_reported(kafka_bootstrap):
    name = f"aether.test.{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name=name, partitions=3, replication_factor=1, configs={"retention.ms": "3600000"})
    try:
        assert ensure_topic(kafka_bootstrap, spec).action == "created"
        again = ensure_topic(kafka_bootstrap, spec)
        assert (again.action, again.partitions) == ("exists", 3)
        assert drift(spec, describe_topic(kafka_bootstrap, name)) == []
        wider = TopicSpec(name=name, partitions=6, replication_factor=1, configs={"retention.ms": "7200000"})
        problems = drift(wider, describe_topic(kafka_bootstrap, name))
        assert any("partitions 3 < declared 6" in p for p in problems)
        assert any("retention.ms" in p for p in problems)
    finally:
        AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics([name])
