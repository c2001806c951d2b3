"""Outbox retention against the real PostgreSQL, Kafka and a Dagster test instance: only published
rows past retention go; pending, dead-lettered and recent rows stay; runs are idempotent and may
overlap; retention running beside the relay and live writers loses no event; the check fails
while rows past retention remain."""
from __future__ import annotations

import threading
import time
import uuid

import dagster as dg
import psycopg
import pytest

from aether_platform import retention
from aether_platform.dagster_defs import outbox_retention as retention_dagster
from aether_platform.db_url import libpq_url
from aether_platform.relay import Relay
from tests.relay.conftest import assert_per_key_order, consume, write_events

JOB = "retire_published_outbox_rows"
OP = "crm__outbox_retention"
DAY = 24 * 3600


@pytest.fixture
def defs(platform_env, monkeypatch):
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):  # the resources' EnvVars
        monkeypatch.setenv(name, platform_env[name])
    from aether_platform.definitions import defs

    return defs


def test_schedule_runs_by_default_and_config_shows_the_environment(defs, monkeypatch):
    schedule = defs.resolve_schedule_def("retire_published_outbox_rows_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING and schedule.job_name == JOB
    # The launchpad's defaults are the environment's (read when the code location loads).
    fields = retention_dagster.RetentionConfig.model_fields
    assert fields["retention_seconds"].default == retention.RetentionSettings().retention_seconds
    assert fields["batch_size"].default == retention.RetentionSettings().batch_size


def test_a_bad_setting_fails_the_run_and_check_with_its_name_not_the_code_location(defs, outbox_db, monkeypatch):
    monkeypatch.setenv("AETHER_OUTBOX_RETENTION_SECONDS", "7d")
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(JOB).execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "AETHER_OUTBOX_RETENTION_SECONDS: must be a whole number of seconds, 0 or off" in str(
        failure.event_specific_data.error)


def _publish(conn, events, age_seconds: float) -> None:
    """Mark events published age_seconds ago, as the relay would have."""
    conn.execute("UPDATE outbox_events SET published_at = now() - make_interval(secs => %s),"
                 " kafka_partition = 0, kafka_offset = id WHERE event_id = ANY(%s)",
                 (age_seconds, [e.event_id for e in events]))


def _remaining(conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT event_id::text FROM outbox_events").fetchall()}


def _ids(events) -> set[str]:
    return {str(e.event_id) for e in events}


def _run(defs, instance, **config) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(JOB).execute_in_process(
        instance=instance, run_config={"ops": {OP: {"config": config}}}, raise_on_error=True)


def test_retires_only_published_rows_past_retention(defs, outbox_db, tenant):
    keys = [uuid.uuid4() for _ in range(4)]
    old = write_events(outbox_db, tenant, keys, per_key=25)            # published 8 days ago: go
    recent = write_events(outbox_db, tenant, keys, per_key=5)          # published an hour ago: stay
    pending = write_events(outbox_db, tenant, keys, per_key=3)         # never published: stay
    dead = write_events(outbox_db, tenant, keys, per_key=2)            # dead-lettered long ago: stay
    _publish(outbox_db, old, 8 * DAY)
    _publish(outbox_db, recent, 3600)
    outbox_db.execute("UPDATE outbox_events SET dead_lettered_at = now() - interval '30 days',"
                      " occurred_at = now() - interval '30 days', retry_count = 5 WHERE event_id = ANY(%s)",
                      ([e.event_id for e in dead],))
    with dg.instance_for_test() as instance:
        result = _run(defs, instance, retention_seconds=7 * DAY, batch_size=7)
        meta = result.asset_materializations_for_node(OP)[0].metadata
        assert meta["rows_retired"].value == len(old)
        assert meta["batches"].value > 1  # the keyset walk crossed batch boundaries
        assert meta["rows_left"].value == len(recent) + len(pending) + len(dead)
        assert meta["rows_past_retention"].value == 0
        assert meta["table_bytes"].value > 0 and meta["index_bytes"].value > 0
        assert 3500 < meta["oldest_published_age_seconds"].value < 3700
        assert meta["vacuum_seconds"].value > 0  # a run that deleted rows vacuums after
        [check] = result.get_asset_check_evaluations()
        assert check.check_name == "retention_keeps_up" and check.passed
    assert _remaining(outbox_db) == _ids(recent) | _ids(pending) | _ids(dead)


def test_retention_off_deletes_nothing(defs, outbox_db, tenant, monkeypatch):
    monkeypatch.setenv("AETHER_OUTBOX_RETENTION_SECONDS", "off")
    assert retention.RetentionSettings().retention_seconds is None
    events = write_events(outbox_db, tenant, [uuid.uuid4()], per_key=10)
    _publish(outbox_db, events, 365 * DAY)
    with dg.instance_for_test() as instance:
        result = _run(defs, instance, retention_seconds=0)
        meta = result.asset_materializations_for_node(OP)[0].metadata
        assert meta["rows_retired"].value == 0 and meta["enabled"].value is False
        assert result.get_asset_check_evaluations()[0].passed  # nothing is "behind" when retention is off
    assert _remaining(outbox_db) == _ids(events)


def test_check_fails_while_rows_past_retention_remain(defs, outbox_db, tenant, monkeypatch):
    monkeypatch.setenv("AETHER_OUTBOX_RETENTION_SECONDS", str(7 * DAY))
    monkeypatch.setenv("AETHER_OUTBOX_RETENTION_SLACK_SECONDS", "3600")
    behind = write_events(outbox_db, tenant, [uuid.uuid4()], per_key=6)
    _publish(outbox_db, behind, 7 * DAY + 7200)  # past retention and slack
    with dg.instance_for_test() as instance:
        # A run that retires nothing (a zero time budget ends before the first batch) leaves them.
        stalled = _run(defs, instance, retention_seconds=7 * DAY, max_seconds=1e-9)
        assert stalled.asset_materializations_for_node(OP)[0].metadata["finished"].value is False
        [check] = stalled.get_asset_check_evaluations()
        assert not check.passed and check.metadata["rows_past_retention_and_slack"].value == 6
        caught_up = _run(defs, instance, retention_seconds=7 * DAY)
        assert caught_up.get_asset_check_evaluations()[0].passed
    assert _remaining(outbox_db) == set()


def test_idempotent_and_two_runs_at_once_split_the_work(database_url, outbox_db, tenant):
    events = write_events(outbox_db, tenant, [uuid.uuid4() for _ in range(50)], per_key=80)
    keep = write_events(outbox_db, tenant, [uuid.uuid4()], per_key=5)
    _publish(outbox_db, events, 10 * DAY)
    results, errors = [], []
    start = threading.Barrier(2)

    def run():
        try:
            with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
                start.wait()
                results.append(retention.retire_published(conn, 7 * DAY, batch_size=100))
        except Exception as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    # Between them, every row exactly once; whatever one skipped (locked by the other) a rerun finds.
    again = retention.retire_published(outbox_db, 7 * DAY, batch_size=100)
    assert sum(r.retired for r in results) + again.retired == len(events)
    assert retention.retire_published(outbox_db, 7 * DAY, batch_size=100).retired == 0
    assert _remaining(outbox_db) == _ids(keep)


def test_retention_beside_relay_and_writers_loses_no_event(database_url, outbox_db, relay_config, tenant,
                                                           kafka_bootstrap, topic):
    """Retention of 1 s runs in a loop while a streaming relay publishes and writers commit
    events: every event reaches Kafka in per-key order, and nothing is left pending."""
    # Each writer has keys of its own, so its list is in id order per key.
    written, stop, errors, retired = [[], []], threading.Event(), [], []
    relay = Relay(relay_config, mode="streaming")
    relay_thread = threading.Thread(target=lambda: relay.run(lifetime_seconds=120))

    def writer(mine: list):
        keys = [uuid.uuid4() for _ in range(10)]
        try:
            with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
                for _ in range(60):
                    with conn.transaction():
                        mine.extend(write_events(conn, tenant, keys, per_key=2))
                    time.sleep(0.02)
        except Exception as exc:
            errors.append(exc)

    def retire():
        try:
            with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
                while not stop.is_set():
                    retired.append(retention.retire_published(conn, 1, batch_size=50).retired)
                    time.sleep(0.05)
        except Exception as exc:
            errors.append(exc)

    relay_thread.start()
    workers = [threading.Thread(target=writer, args=(w,)) for w in written] + [threading.Thread(target=retire)]
    for t in workers:
        t.start()
    for t in workers[:2]:
        t.join(timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and outbox_db.execute(
            "SELECT count(*) FROM outbox_events WHERE published_at IS NULL").fetchone()[0]:
        time.sleep(0.1)
    time.sleep(1.5)  # one more retention cycle past the last publish
    stop.set()
    workers[2].join(timeout=60)
    relay.stop()
    relay_thread.join(timeout=60)
    assert not errors
    assert outbox_db.execute("SELECT count(*) FROM outbox_events WHERE published_at IS NULL").fetchone()[0] == 0
    assert sum(retired) > 0, "retention never retired anything while the relay ran"
    events = written[0] + written[1]
    records = consume(kafka_bootstrap, topic, _ids(events))
    assert {r.event_id for r in records} == _ids(events)
    assert_per_key_order(records, events)
