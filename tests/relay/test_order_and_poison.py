"""The relay in-process against the real Postgres and Kafka: per-key order, poison isolation,
dead-lettering, requeue, and the counters the dashboards read."""
from __future__ import annotations

import uuid

from aether_platform import outbox
from aether_platform.outbox_stats import outbox_stats
from aether_platform.relay import CLAIM_SQL, Relay, has_eligible, requeue
from aether_platform.topics import MAX_MESSAGE_BYTES
from tests.relay.conftest import assert_per_key_order, consume, write_events


def test_per_key_order_across_three_partitions(outbox_db, relay_config, tenant, kafka_bootstrap, topic):
    keys = [uuid.uuid4() for _ in range(30)]
    events = write_events(outbox_db, tenant, keys, per_key=40)
    relay_config.batch_size = 97  # batches cut through every key's sequence

    totals = Relay(relay_config, mode="batch").run()

    assert totals.published == len(events) and totals.failures == 0
    records = consume(kafka_bootstrap, topic, {str(e.event_id) for e in events})
    assert len(records) == len(events)
    assert len({r.partition for r in records}) == 3
    assert_per_key_order(records, events)
    r = records[0]
    src = next(e for e in events if str(e.event_id) == r.event_id)
    assert r.key == str(src.aggregate_id)
    assert r.headers["event_type"] == "JobUpdated" and r.headers["tenant_id"] == tenant
    assert r.headers["occurred_at"] == outbox.iso_utc(src.occurred_at)
    assert outbox_db.execute("SELECT count(*) FROM outbox_events WHERE published_at IS NULL"
                             " OR kafka_offset IS NULL").fetchone() == (0,)
    status = outbox_db.execute("SELECT published_total, attempts_total, failures_total, heartbeat_at"
                               " FROM relay_status WHERE relay = 'outbox-relay'").fetchone()
    assert status[:3] == (len(events), len(events), 0) and status[3] is not None


def test_poison_event_isolates_its_key_dead_letters_and_requeues(outbox_db, relay_config, tenant,
                                                                  kafka_bootstrap, topic):
    poison_key, other_key = uuid.uuid4(), uuid.uuid4()
    t = uuid.UUID(tenant)
    poison = outbox.make_event("JobCreated", "job", t, poison_key, {"Title": "p" * (MAX_MESSAGE_BYTES + 10)})
    after_poison = outbox.make_event("JobUpdated", "job", t, poison_key, {"Title": "after"})
    others = [outbox.make_event("JobCreated", "job", t, other_key, {"Title": f"o{i}"}) for i in range(3)]
    with outbox_db.cursor() as cur:
        for e in (others[0], poison, others[1], after_poison, others[2]):
            outbox.write(cur, e)
    observed = []

    relay = Relay(relay_config, mode="batch", on_progress=lambda stats, totals: observed.append(stats))
    for _ in range(50):  # batch runs, as the sensor would launch them, until the poison dead-letters
        relay.run()
        if not has_eligible(outbox_db) and outbox_stats(outbox_db).dead_lettered:
            break

    row = outbox_db.execute("SELECT retry_count, dead_lettered_at IS NOT NULL, last_error FROM outbox_events"
                            " WHERE event_id = %s", (poison.event_id,)).fetchone()
    assert row[0] == relay_config.max_retries == 5 and row[1] and "MSG_SIZE_TOO_LARGE" in row[2]
    blocked = outbox_db.execute("SELECT published_at, retry_count FROM outbox_events WHERE event_id = %s",
                                (after_poison.event_id,)).fetchone()
    assert blocked == (None, 0), "a later event of the poisoned key must wait behind it"
    unpublished_others = outbox_db.execute(
        "SELECT count(*) FROM outbox_events WHERE aggregate_key = %s AND published_at IS NULL",
        (str(other_key),)).fetchone()[0]
    assert unpublished_others == 0, "another key must not be blocked"
    assert observed[-1].dead_lettered == 1 and observed[-1].pending == 1
    status = outbox_db.execute("SELECT published_total, attempts_total, failures_total, dead_lettered_total"
                               " FROM relay_status").fetchone()
    assert status == (3, 8, 5, 1)

    # The operator fixes the cause (here: shrinks the payload), then requeues.
    outbox_db.execute("UPDATE outbox_events SET payload = '{\"Type\": \"JobCreated\"}' WHERE event_id = %s",
                      (poison.event_id,))
    assert requeue(outbox_db, [str(poison.event_id)]) == 1
    Relay(relay_config, mode="batch").run()

    wanted = {str(e.event_id) for e in (poison, after_poison, *others)}
    records = consume(kafka_bootstrap, topic, wanted)
    assert {r.event_id for r in records} == wanted and len(records) == len(wanted)
    assert_per_key_order(records, [others[0], poison, others[1], after_poison, others[2]])
    assert outbox_stats(outbox_db).dead_lettered == 0


def test_a_backoff_expiring_during_a_claim_never_lets_a_later_event_of_its_key_overtake(outbox_db, tenant):
    """The claim decides "is this row due?" and "is an earlier row of its key still backing
    off?" against one instant. With a clock that moved during the statement, a backoff that
    expired between the two rows let the later event be claimed without the earlier one, which
    was then published after it (seen once in a clean-clone run, on the poison test above).
    Here the earlier event's backoff ends a few milliseconds into a claim that first scans
    thousands of rows of other keys, many times over."""
    t = uuid.UUID(tenant)
    key = uuid.uuid4()
    first = outbox.make_event("JobCreated", "job", t, key, {"Title": "first"})
    with outbox_db.cursor() as cur:
        outbox.write(cur, first)
    write_events(outbox_db, tenant, [uuid.uuid4() for _ in range(3000)], per_key=1)  # scanned between the two
    later = outbox.make_event("JobUpdated", "job", t, key, {"Title": "later"})
    with outbox_db.cursor() as cur:
        outbox.write(cur, later)
    for attempt in range(40):
        with outbox_db.transaction(force_rollback=True):
            outbox_db.execute("UPDATE outbox_events SET next_attempt_at = clock_timestamp() + %s * interval '1 ms'"
                              " WHERE event_id = %s", (1 + attempt % 8, first.event_id))
            claimed = {row[1] for row in outbox_db.execute(CLAIM_SQL, (10_000,)).fetchall()}
        if str(later.event_id) in claimed:
            assert str(first.event_id) in claimed, f"attempt {attempt}: the later event was claimed without the first"
