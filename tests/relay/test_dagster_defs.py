"""The Dagster shell against a real instance, Postgres and Kafka: the definitions load, the relay
sensor never double-launches, the relay and requeue jobs run, the topic asset provisions and its
check reports drift, and key expiry deletes only expired keys."""
from __future__ import annotations

import json
import time
import uuid

import dagster as dg
import psycopg
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.utils import make_new_run_id

from aether_platform import relay as relay_core
from aether_platform.dagster_defs import kafka_topic, outbox
from aether_platform.db_url import libpq_url
from aether_platform.dagster_defs.resources import CrmDatabase, RelayResource
from aether_platform.key_expiry import expire_keys
from aether_platform.settings import get_settings
from tests.relay.conftest import consume, write_events


@pytest.fixture
def defs(platform_env, monkeypatch):
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):  # the resources' EnvVars
        monkeypatch.setenv(name, platform_env[name])
    from aether_platform.definitions import defs

    return defs


def test_definitions_load(defs):
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    # The graph reads as the data flows: outbox → relay → events on the topic; the topic itself is
    # provisioned before the relay publishes to it, so it is upstream for execution.
    assert graph.get(kafka_topic.RELAY_KEY).parent_keys == {outbox.OUTBOX_KEY, kafka_topic.TOPIC_KEY}
    assert graph.get(kafka_topic.EVENTS_KEY).parent_keys == {kafka_topic.RELAY_KEY}
    assert graph.get(kafka_topic.TOPIC_KEY).parent_keys == set()
    assert not graph.get(kafka_topic.EVENTS_KEY).is_materializable
    for name in ("outbox_relay_streaming", "outbox_relay_batch"):
        job = defs.resolve_job_def(name)
        assert job.tags["aether/lane"] == "outbox-relay" and job.executor_def is dg.in_process_executor
    for sensor in defs.sensors:
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert next(iter(defs.schedules)).default_status == dg.DefaultScheduleStatus.RUNNING


def _add_run(instance, request: dg.RunRequest, status: dg.DagsterRunStatus) -> dg.DagsterRun:
    # What the daemon does with a request: a run of that job, carrying the job's and the request's tags.
    job_tags = {"aether/lane": "outbox-relay"}
    location = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="aether_platform.definitions"))
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), request.job_name)
    run = dg.DagsterRun(job_name=request.job_name, run_id=make_new_run_id(), status=status,
                        tags={**job_tags, **request.tags}, remote_job_origin=origin)
    instance.add_run(run)
    return run


def _tick_with_cursor(instance, database_url, cursor: str | None = None, **relay_settings):
    """One sensor evaluation: its result and the cursor it leaves for the next tick."""
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"crm_db": CrmDatabase(dsn=database_url),
                                             "relay": RelayResource(**relay_settings)})
    return outbox.outbox_relay_sensor(ctx), ctx.cursor


def _tick(instance, database_url, **relay_settings):
    return _tick_with_cursor(instance, database_url, **relay_settings)[0]


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                                    dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                                    dg.DagsterRunStatus.CANCELING])
def test_streaming_sensor_never_double_launches(database_url, outbox_db, status):
    with dg.instance_for_test() as instance:
        first = _tick(instance, database_url)
        assert isinstance(first, dg.RunRequest) and first.job_name == "outbox_relay_streaming"
        run = _add_run(instance, first, status)
        for _ in range(3):
            assert isinstance(_tick(instance, database_url), dg.SkipReason)
        instance.report_run_failed(run)
        assert isinstance(_tick(instance, database_url), dg.RunRequest), "an ended streaming run is relaunched"


def test_a_relay_run_whose_process_died_is_reported_failed_and_replaced(database_url, outbox_db):
    """A killed run worker leaves its run STARTED for ever (the default launcher cannot check
    worker health): without this, the sensor would skip "a relay is active" indefinitely."""
    with dg.instance_for_test() as instance:
        run = _add_run(instance, _tick(instance, database_url), dg.DagsterRunStatus.STARTED)
        long_ago = json.dumps({run.run_id: time.time() - 60})
        # Alive: its database session carries the run id, however long ago it was last missed.
        with psycopg.connect(libpq_url(database_url), application_name=relay_core.SESSION_PREFIX + run.run_id):
            result, cursor = _tick_with_cursor(instance, database_url, long_ago)
            assert isinstance(result, dg.SkipReason) and cursor is None
        # Gone: first noticed (and remembered in the cursor), not yet judged.
        result, cursor = _tick_with_cursor(instance, database_url, None)
        assert isinstance(result, dg.SkipReason) and run.run_id in json.loads(cursor)
        result, _ = _tick_with_cursor(instance, database_url, cursor)
        assert isinstance(result, dg.SkipReason)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        # Gone for longer than the limit: reported failed, and a new relay is requested.
        result, cursor = _tick_with_cursor(instance, database_url, json.dumps({run.run_id: time.time() - 31}))
        assert isinstance(result, dg.RunRequest) and result.job_name == "outbox_relay_streaming"
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert cursor is None


def test_streaming_handover_gets_exactly_one_successor(database_url, outbox_db):
    with dg.instance_for_test() as instance:
        leader = _add_run(instance, _tick(instance, database_url, lifetime_seconds=30), dg.DagsterRunStatus.STARTED)
        successor = _tick(instance, database_url, lifetime_seconds=30)
        assert isinstance(successor, dg.RunRequest)
        assert successor.tags["aether/relay-successor-of"] == leader.run_id
        _add_run(instance, successor, dg.DagsterRunStatus.QUEUED)
        assert isinstance(_tick(instance, database_url, lifetime_seconds=30), dg.SkipReason)


def test_batch_sensor_launches_only_for_due_work(database_url, outbox_db, tenant):
    with dg.instance_for_test() as instance:
        assert isinstance(_tick(instance, database_url, mode="batch"), dg.SkipReason)
        write_events(outbox_db, tenant, [uuid.uuid4()], per_key=2)
        request = _tick(instance, database_url, mode="batch")
        assert isinstance(request, dg.RunRequest) and request.job_name == "outbox_relay_batch"
        _add_run(instance, request, dg.DagsterRunStatus.STARTING)
        assert isinstance(_tick(instance, database_url, mode="batch"), dg.SkipReason)
        # A key blocked behind a dead-lettered event is not work: no run would publish it.
        outbox_db.execute("UPDATE outbox_events SET dead_lettered_at = now()"
                          " WHERE id = (SELECT min(id) FROM outbox_events)")
    with dg.instance_for_test() as instance:
        assert isinstance(_tick(instance, database_url, mode="batch"), dg.SkipReason)


def test_relay_and_requeue_jobs(defs, outbox_db, tenant, kafka_bootstrap, topic):
    events = write_events(outbox_db, tenant, [uuid.uuid4() for _ in range(5)], per_key=4)
    poisoned = events[0]
    outbox_db.execute("UPDATE outbox_events SET dead_lettered_at = now(), retry_count = 5 WHERE event_id = %s",
                      (poisoned.event_id,))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("outbox_relay_batch").execute_in_process(instance=instance)
        assert result.success
        mat = result.asset_materializations_for_node("outbox_relay")[0]
        assert mat.metadata["published"].value == len(events) - 4  # the poisoned key waits
        observations = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
                        and e.event_specific_data.asset_observation.asset_key == outbox.OUTBOX_KEY]
        assert observations and observations[-1].event_specific_data.asset_observation.metadata[
            "dead_lettered"].value == 1

        requeue = defs.resolve_job_def("requeue_dead_lettered_events").execute_in_process(
            instance=instance, run_config={"ops": {"requeue_dead_letters": {"config": {
                "event_ids": [str(poisoned.event_id)]}}}})
        assert requeue.success and requeue.output_for_node("requeue_dead_letters") == 1
        assert defs.resolve_job_def("outbox_relay_batch").execute_in_process(instance=instance).success
    records = consume(kafka_bootstrap, topic, {str(e.event_id) for e in events})
    assert {r.event_id for r in records} == {str(e.event_id) for e in events}


def test_topic_asset_provisions_and_check_reports_drift(defs, kafka_bootstrap, monkeypatch):
    name = f"aetherlink.events.topic-asset-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AETHER_TOPIC", name)
    get_settings.cache_clear()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        with dg.instance_for_test() as instance:
            ctx = dg.build_sensor_context(instance=instance)
            assert isinstance(kafka_topic.topic_provisioning_sensor(ctx), dg.RunRequest)
            result = defs.resolve_job_def("provision_kafka_topic").execute_in_process(instance=instance)
            assert result.success
            mat = result.asset_materializations_for_node("kafka__crm_events_topic")[0]
            assert mat.metadata["action"].value == "created" and mat.metadata["partitions"].value == 3
            [check] = result.get_asset_check_evaluations()
            assert check.passed
            assert isinstance(kafka_topic.topic_provisioning_sensor(ctx), dg.SkipReason)

            res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
                ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
            admin.incremental_alter_configs([res])[res].result(timeout=15)
            time.sleep(1)
            rerun = defs.resolve_job_def("provision_kafka_topic").execute_in_process(instance=instance)
            [check] = rerun.get_asset_check_evaluations()
            assert not check.passed and "retention.ms" in str(check.metadata["drift"].value)
            # Drift is reported, never fixed silently.
            assert rerun.asset_materializations_for_node("kafka__crm_events_topic")[0].metadata[
                "action"].value == "exists"
    finally:
        admin.delete_topics([name])
        get_settings.cache_clear()


def test_expiry_deletes_only_expired_keys(defs, outbox_db, tenant):
    outbox_db.execute("TRUNCATE idempotency_keys")
    rows = [(tenant, f"k{i}", "/api/crm/jobs", "POST", 202, "{}", f"now() {'-' if i < 7 else '+'} interval '1 hour'")
            for i in range(10)]
    for t, key, path, method, code, body, expires in rows:
        outbox_db.execute("INSERT INTO idempotency_keys (tenant_id, key, request_path, request_method, status_code,"
                          f" response_body, expires_at) VALUES (%s, %s, %s, %s, %s, %s, {expires})",
                          (t, key, path, method, code, body))
    r = expire_keys(outbox_db, batch_size=3)
    assert (r.deleted, r.remaining, r.remaining_expired, r.batches) == (7, 3, 0, 3)
    left = {k for (k,) in outbox_db.execute("SELECT key FROM idempotency_keys")}
    assert left == {"k7", "k8", "k9"}
    outbox_db.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'k7'")
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("expire_idempotency_keys").execute_in_process(instance=instance)
    meta = result.asset_materializations_for_node("crm__idempotency_keys")[0].metadata
    assert (meta["deleted"].value, meta["remaining"].value) == (1, 2)
