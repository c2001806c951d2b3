"""A relay run in Dagster logs in the platform's format: with AETHER_LOG_FORMAT=json, every line
of the run's process is a JSON object, Dagster's run events and the relay's own lines alike, and
each carries the run's id."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from tests.conftest import REPO
from tests.relay.conftest import write_events

# The run in a process of its own, so that its whole stderr can be read; Dagster's own test
# instance (no telemetry banner, a temporary DAGSTER_HOME).
_RUN_THE_RELAY = """
import dagster as dg
from aether_platform.definitions import defs

with dg.instance_for_test() as instance:
    result = defs.resolve_job_def("outbox_relay_batch").execute_in_process(instance=instance)
    print(result.run_id)
"""


def test_relay_run_logs_json_lines_with_the_run_id(platform_env, outbox_db, tenant):
    write_events(outbox_db, tenant, [uuid.uuid4()], per_key=2)
    r = subprocess.run([sys.executable, "-c", _RUN_THE_RELAY], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, **platform_env, "AETHER_LOG_FORMAT": "json", "AETHER_LOG_LEVEL": "INFO"})
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.strip().splitlines()[-1]
    lines = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    relay = [line for line in lines if line["logger"].startswith("aether.relay")]
    assert relay and all(line["run_id"] == run_id for line in relay)
    events = {line.get("dagster_event") for line in lines if line.get("run_id") == run_id}
    assert {"PIPELINE_START", "STEP_START", "ASSET_MATERIALIZATION", "PIPELINE_SUCCESS"} <= events
