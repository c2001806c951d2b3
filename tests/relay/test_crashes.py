"""What a kill -9 of the relay and a broker stop do: nothing is lost, order holds, and the only
duplicates are the documented ones (an acknowledged batch re-sent with the same event ids)."""
from __future__ import annotations

import signal
import time
import uuid
from collections import Counter

import pytest

from aether_platform.relay import live_relay_runs
from aether_platform.topics import TopicSpec, ensure_topic
from tests.conftest import wait_for
from tests.relay.conftest import assert_per_key_order, consume, relay_process, write_events

pytestmark = pytest.mark.slow


def _published(db) -> int:
    return db.execute("SELECT count(*) FROM outbox_events WHERE published_at IS NOT NULL").fetchone()[0]


def test_kill_9_mid_batch_loses_nothing(outbox_db, platform_env, tenant, kafka_bootstrap, topic, tmp_path):
    events = write_events(outbox_db, tenant, [uuid.uuid4() for _ in range(300)], per_key=100)
    env = {**platform_env, "AETHER_RELAY_BATCH_SIZE": "200"}

    run_id = f"kill-9-{uuid.uuid4().hex[:8]}"
    first = relay_process(env, "--mode", "batch", "--run-id", run_id, log=tmp_path / "relay-1.log")
    wait_for("the first published batches", lambda: _published(outbox_db) >= 2000, 60, first)
    # The relay's session names its run: how the Dagster sensor tells a live relay from a dead one.
    assert run_id in live_relay_runs(outbox_db)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    at_kill = _published(outbox_db)
    assert at_kill < len(events), "the relay finished before the kill; the test proves nothing"
    wait_for("the killed relay's session to end", lambda: run_id not in live_relay_runs(outbox_db), 10)

    second = relay_process(env, "--mode", "batch", log=tmp_path / "relay-2.log")
    assert second.wait(120) == 0, (tmp_path / "relay-2.log").read_text()
    assert _published(outbox_db) == len(events)

    records = consume(kafka_bootstrap, topic, {str(e.event_id) for e in events})
    counts = Counter(r.event_id for r in records)
    assert set(counts) == {str(e.event_id) for e in events}, "an event was lost"
    duplicates = [eid for eid, n in counts.items() if n > 1]
    # Only the batch in flight at the kill can have been acknowledged and not committed.
    assert len(duplicates) <= 200 and max(counts.values()) <= 2
    assert_per_key_order(records, events)


@pytest.fixture
def own_broker(outbox_db, throwaway_kafka):
    """A broker the test may stop (tests.conftest.ThrowawayKafka), with a topic of its own."""
    topic = f"aetherlink.events.broker-test-{uuid.uuid4().hex[:6]}"
    ensure_topic(throwaway_kafka.bootstrap, TopicSpec(name=topic, partitions=3, replication_factor=1))
    return {"bootstrap": throwaway_kafka.bootstrap, "topic": topic, "up": throwaway_kafka.up,
            "stop": throwaway_kafka.stop}


def test_broker_stop_and_restart_loses_nothing(outbox_db, platform_env, tenant, own_broker, tmp_path):
    env = {**platform_env, "KAFKA_BOOTSTRAP_SERVERS": own_broker["bootstrap"], "AETHER_TOPIC": own_broker["topic"],
           "AETHER_RELAY_MESSAGE_TIMEOUT_MS": "3000", "AETHER_RELAY_TRANSIENT_BACKOFF_SECONDS": "0.5",
           "AETHER_RELAY_TRANSIENT_BACKOFF_CAP_SECONDS": "2"}
    keys = [uuid.uuid4() for _ in range(20)]
    events = write_events(outbox_db, tenant, keys, per_key=10)
    relay = relay_process(env, "--mode", "streaming", log=tmp_path / "relay.log")
    try:
        wait_for("the first events", lambda: _published(outbox_db) == len(events), 60, relay)

        own_broker["stop"]()
        for _ in range(5):  # the API keeps writing while Kafka is down
            events += write_events(outbox_db, tenant, keys, per_key=2)
            time.sleep(0.2)
        wait_for("a transient failure to be recorded", lambda: outbox_db.execute(
            "SELECT count(*) FROM outbox_events WHERE next_attempt_at IS NOT NULL AND last_error IS NOT NULL"
        ).fetchone()[0] > 0, 30, relay)
        assert outbox_db.execute("SELECT max(retry_count), count(dead_lettered_at) FROM outbox_events"
                                 ).fetchone() == (0, 0), "a broker outage is not the events' fault"

        own_broker["up"]()
        wait_for("every event after the restart", lambda: _published(outbox_db) == len(events), 90, relay)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(30)
    assert relay.returncode == 0, (tmp_path / "relay.log").read_text()

    records = consume(own_broker["bootstrap"], own_broker["topic"], {str(e.event_id) for e in events})
    counts = Counter(r.event_id for r in records)
    assert set(counts) == {str(e.event_id) for e in events}, "an event was lost"
    assert max(counts.values()) == 1, "the relay was not killed, so no event may be duplicated"
    assert_per_key_order(records, events)
    status = outbox_db.execute("SELECT published_total, failures_total FROM relay_status").fetchone()
    assert status[0] == len(events) and status[1] > 0
