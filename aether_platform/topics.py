"""The Kafka topic as code: its declared spec, idempotent creation, and drift detection.

Provisioning creates a missing topic and never "fixes" an existing one: a difference between the
declared spec and the broker is reported as drift (the Dagster asset check fails) so that an
operator decides. Partitions may grow beyond the spec, never shrink below it, because the
partition of a key (and so per-key order) depends on the count.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from aether_platform.kafka_client import connection, silent_logger
from aether_platform.settings import get_settings

# Broker-side limit for one record. The relay's producer uses the same figure as its client-side
# `message.max.bytes`, so an oversized event fails synchronously at produce() — before any later
# event of the same key is sent — instead of in an asynchronous delivery report.
MAX_MESSAGE_BYTES = 1_048_576


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicState:
    name: str
    exists: bool
    partitions: int = 0
    replication_factor: int = 0
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsureResult:
    action: str  # "created" or "exists"
    partitions: int


def declared_topic() -> TopicSpec:
    s = get_settings()
    return TopicSpec(
        name=s.topic,
        partitions=s.topic_partitions,
        replication_factor=s.topic_replication_factor,
        configs={
            "cleanup.policy": "delete",
            # Seven days: the SSE bridge can resume any client cursor younger than this.
            "retention.ms": str(7 * 24 * 3600 * 1000),
            "max.message.bytes": str(MAX_MESSAGE_BYTES),
            "message.timestamp.type": "CreateTime",
            "min.insync.replicas": str(min(2, s.topic_replication_factor)),
        },
    )


def _admin(kafka) -> AdminClient:
    return AdminClient({**connection(kafka), "logger": silent_logger("aether.kafka.admin")})


# `kafka` below: a bootstrap list, or a config dict from aether_platform.kafka_client.client_config().


def describe_topic(kafka, name: str, timeout: float = 10.0) -> TopicState:
    admin = _admin(kafka)
    md = admin.list_topics(topic=name, timeout=timeout)
    t = md.topics.get(name)
    if t is None or t.error is not None:
        return TopicState(name=name, exists=False)
    partitions = len(t.partitions)
    rf = min((len(p.replicas) for p in t.partitions.values()), default=0)
    res = ConfigResource(ResourceType.TOPIC, name)
    configs = admin.describe_configs([res])[res].result(timeout=timeout)
    return TopicState(name=name, exists=True, partitions=partitions, replication_factor=rf,
                      configs={k: v.value for k, v in configs.items()})


def ensure_topic(kafka, spec: TopicSpec, timeout: float = 30.0) -> EnsureResult:
    """Create the topic if it is missing. Safe to call concurrently and repeatedly."""
    state = describe_topic(kafka, spec.name, timeout)
    if state.exists:
        return EnsureResult("exists", state.partitions)
    admin = _admin(kafka)
    fut = admin.create_topics([NewTopic(spec.name, num_partitions=spec.partitions,
                                        replication_factor=spec.replication_factor, config=dict(spec.configs))],
                              operation_timeout=timeout)[spec.name]
    try:
        fut.result(timeout=timeout)
        action = "created"
    except KafkaException as exc:
        if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
            raise
        action = "exists"
    return EnsureResult(action, describe_topic(kafka, spec.name, timeout).partitions)


def drift(spec: TopicSpec, state: TopicState) -> list[str]:
    """Human-readable differences between the declared spec and the broker; empty means in spec."""
    if not state.exists:
        return [f"topic {spec.name} does not exist"]
    out = []
    if state.partitions < spec.partitions:
        out.append(f"partitions {state.partitions} < declared {spec.partitions} (partitions never shrink)")
    if state.replication_factor != spec.replication_factor:
        out.append(f"replication factor {state.replication_factor} != declared {spec.replication_factor}")
    for key, want in sorted(spec.configs.items()):
        have = state.configs.get(key)
        if have != want:
            out.append(f"{key}={have!r}, declared {want!r}")
    return out
