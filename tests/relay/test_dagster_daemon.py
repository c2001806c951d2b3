"""Smoke test of the real Dagster processes: the stack starts dagster-webserver and
dagster-daemon on a DAGSTER_HOME of its own (devstack/dagster/dagster.yaml: dagster-postgres
storage, here on a database of the test's own), the daemon ticks outbox_relay_sensor, the
sensor launches a relay run, and that run publishes an outbox row to Kafka. The other relay
tests drive the sensor through hand-made contexts; this one has nothing hand-made."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import httpx
import psycopg
import pytest

from aether_platform.db_url import libpq_url, with_database
from aether_platform.relay import live_relay_runs
from tests.conftest import CLI, REPO, RUN_ID, create_database, drop_database, migrated_database, stack_exports
from tests.relay.conftest import consume, write_events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RUN_QUERY = """
query ($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { jobName status tags { key value } }
  }
}
"""


def _wait(what: str, check, timeout: float, stack_dir) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (psycopg.Error, httpx.HTTPError):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- {p.name} (tail)\n" + p.read_text(errors="replace")[-3000:]
                           for p in sorted((stack_dir / "logs").glob("dagster*.log")))
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{logs}")
        time.sleep(1)


@pytest.fixture
def dagster_stack(base_database_url, kafka_bootstrap, topic):
    """The stack's Dagster webserver and daemon in a state directory of their own, on a port the
    stack picks, over a migrated CRM database and a Dagster storage database of their own."""
    suffix = f"{RUN_ID}_{uuid.uuid4().hex[:6]}"
    crm_name, dagster_name = f"aether_dsmoke_{suffix}", f"aether_dsmoke_dagster_{suffix}"
    crm = migrated_database(base_database_url, crm_name)
    create_database(base_database_url, dagster_name)
    state = REPO / ".stack" / "test-stacks" / uuid.uuid4().hex[:8]
    state.mkdir(parents=True)
    env = {**os.environ, "AETHER_STACK_DIR": str(state), "AETHER_DAGSTER_PORT": "0",
           # The CRM database and Kafka are given as external servers, so the stack starts neither.
           "AETHER_EXTERNAL_DATABASE_URL": crm, "AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "DATABASE_URL": crm, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "AETHER_TOPIC": topic,
           "DAGSTER_PG_URL": with_database(base_database_url, dagster_name)}
    try:
        r = subprocess.run([*CLI, "stack", "up", "--services", "dagster-webserver,dagster-daemon"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stdout + r.stderr
        yield {"crm": crm, "url": stack_exports(env)["DAGSTER_URL"], "state": state}
    finally:
        down = subprocess.run([*CLI, "stack", "down"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        print(down.stdout, down.stderr)  # what stopped, and how: shown with -s or on failure
        # The relay run was a child of the daemon's code server: `down` ended its process group.
        with psycopg.connect(libpq_url(crm)) as db:
            deadline = time.monotonic() + 30
            while live_relay_runs(db) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not live_relay_runs(db), "a relay run outlived the stack"
        drop_database(base_database_url, crm_name)
        drop_database(base_database_url, dagster_name)
        shutil.rmtree(state, ignore_errors=True)


def test_the_daemon_runs_the_sensor_which_launches_a_relay_that_publishes(dagster_stack, kafka_bootstrap, topic,
                                                                         tenant):
    state = dagster_stack["state"]
    assert httpx.get(f"{dagster_stack['url']}/server_info", timeout=10).status_code == 200
    with psycopg.connect(libpq_url(dagster_stack["crm"]), autocommit=True) as db:
        [event] = write_events(db, tenant, [uuid.uuid4()], per_key=1)
        _wait("the outbox row to be published", lambda: db.execute(
            "SELECT published_at FROM outbox_events WHERE event_id = %s", (event.event_id,)).fetchone()[0], 300, state)
        [run_id] = db.execute("SELECT run_id FROM relay_status").fetchone()

    # The run that published it is a Dagster run of the relay job, launched by the sensor.
    run = httpx.post(f"{dagster_stack['url']}/graphql", json={"query": RUN_QUERY, "variables": {"runId": run_id}},
                     timeout=30).json()["data"]["runOrError"]
    assert run["__typename"] == "Run", run
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert run["jobName"] == "outbox_relay_streaming" and run["status"] == "STARTED", run
    assert tags.get("dagster/sensor_name") == "outbox_relay_sensor", tags
    [record] = consume(kafka_bootstrap, topic, {str(event.event_id)})
    assert record.headers["event_type"] == "JobUpdated" and record.key == event.aggregate_key
