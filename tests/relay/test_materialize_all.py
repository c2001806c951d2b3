"""What an operator's "Materialize all" does in the Dagster UI: it launches __ASSET_JOB over every
materializable asset with default config. While the sensor's streaming relay leads, that run must
finish (the relay step refused at once, naming the leader) instead of queueing behind the leader
lock for the leader's lifetime; with no leader it drains the outbox once and exits."""
from __future__ import annotations

import sys
import threading
import time
import traceback
import uuid

import dagster as dg
import pytest

from aether_platform import relay as relay_core
from aether_platform.outbox_stats import outbox_stats
from aether_platform.dagster_defs import kafka_topic, outbox
from tests.relay.conftest import relay_process, write_events
from tests.relay.test_dagster_defs import defs  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

RUN_BOUND_S = 180


def _materialize_all(defs, instance):  # noqa: F811
    """__ASSET_JOB over every materializable unpartitioned asset, default config, as the UI button
    launches it (the daily SLO reports are partitioned: the button asks for their partitions and
    launches those as a backfill of their own)."""
    keys = [node.key for node in defs.resolve_asset_graph().asset_nodes
            if node.is_materializable and node.partitions_def is None]
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.name == "__ASSET_JOB"
    return job.execute_in_process(instance=instance, asset_selection=keys, raise_on_error=False)


# Without Dagster's compute-log capture. It redirects the process's stdout and stderr and spawns
# `tail -F` processes for them, from whichever thread runs the job; here that is a test thread
# beside pytest's own capture, which production never does (a run has its own process). In the
# one CI run where these tests failed, every step had succeeded within a second and those tails
# were still alive a minute later, so the run had not left the capture: not proven to be the
# cause, but not what these tests are about.
NO_COMPUTE_LOGS = {"compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager",
                                    "class": "NoOpComputeLogManager"}}


def _hang_report(thread: threading.Thread, instance) -> str:
    """What a run that did not finish was doing: the thread's stack and the run's last events.
    A hang here once happened after every step had succeeded, in one CI run of several, and was
    not reproducible alone; this report is what the next one will say."""
    frame = sys._current_frames().get(thread.ident)
    stack = "".join(traceback.format_stack(frame)) if frame else "(thread gone)"
    lines = []
    for run in instance.get_runs(limit=1):
        for entry in instance.all_logs(run.run_id)[-12:]:
            event = entry.dagster_event
            lines.append(f"{entry.step_key or '-'}: {event.event_type_value if event else entry.user_message[:120]}")
    return "stack of the run's thread:\n" + stack + "\nlast events of the run:\n" + "\n".join(lines)


def _in_thread(fn):
    """Run fn in a daemon thread, so that a run stuck on the leader lock fails the test instead of hanging it."""
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn()), daemon=True)
    thread.start()
    return thread, box


def test_materialize_all_finishes_while_a_streaming_relay_leads(defs, outbox_db, tenant, platform_env,  # noqa: F811
                                                                tmp_path):
    leader_id = f"streaming-leader-{uuid.uuid4().hex[:8]}"
    leader = relay_process(platform_env, "--mode", "streaming", "--lifetime", "600", "--run-id", leader_id,
                           log=tmp_path / "leader.log")
    try:
        deadline = time.monotonic() + 60
        while relay_core.leader_run(outbox_db) != leader_id:
            assert leader.poll() is None, (tmp_path / "leader.log").read_text()
            assert time.monotonic() < deadline, "the streaming relay never led"
            time.sleep(0.1)
        with dg.instance_for_test(overrides=NO_COMPUTE_LOGS) as instance:
            thread, box = _in_thread(lambda: _materialize_all(defs, instance))
            # A bounded wait, not a timing assertion: before the fix this run queued for the leader's
            # whole lifetime (600 s here). 180 s, because one clean-clone CI run on a slow minute
            # took over 60 s to finish the run after its last step had succeeded.
            thread.join(RUN_BOUND_S)
            assert not thread.is_alive(), ("Materialize all did not finish (queued behind the streaming relay's "
                                           "leader lock?)\n" + _hang_report(thread, instance))
            result = box["result"]
            assert result.success
            run = instance.get_run_by_id(result.run_id)
            assert run.tags[outbox.REFUSED_BY_TAG] == leader_id and run.tags[outbox.ROLE_TAG] == "refused"
            # The topic was provisioned, the relay left the outbox to its leader and said so.
            materialized = {e.asset_key for e in result.get_asset_materialization_events()}
            assert kafka_topic.TOPIC_KEY in materialized and kafka_topic.RELAY_KEY not in materialized
            observation = instance.fetch_observations(kafka_topic.RELAY_KEY, limit=1).records[0]
            meta = observation.asset_observation.metadata
            assert meta["leader_run"].value == leader_id and "led by run " + leader_id in meta["reason"].value
        assert leader.poll() is None, "the leader kept leading"
    finally:
        leader.terminate()
        leader.wait(30)


def test_materialize_all_drains_the_outbox_once_when_no_relay_leads(defs, outbox_db, tenant):  # noqa: F811
    events = write_events(outbox_db, tenant, [uuid.uuid4() for _ in range(5)], per_key=3)
    with dg.instance_for_test(overrides=NO_COMPUTE_LOGS) as instance:
        thread, box = _in_thread(lambda: _materialize_all(defs, instance))
        thread.join(RUN_BOUND_S)
        assert not thread.is_alive(), "the manual relay did not exit after draining\n" + _hang_report(thread, instance)
        result = box["result"]
        assert result.success
        mat = result.asset_materializations_for_node("outbox_relay")[0]
        assert mat.metadata["mode"].value == "batch" and mat.metadata["published"].value == len(events)
        assert mat.metadata["leader_run"].value == result.run_id and mat.metadata["lag_seconds"].value == 0
        assert instance.get_run_by_id(result.run_id).tags[outbox.ROLE_TAG] == "leader"
    assert outbox_stats(outbox_db).pending == 0
