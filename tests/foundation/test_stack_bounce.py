"""Bouncing one service of a running stack: `aether stack down --services X` stops X alone and
`aether stack restart X` brings it back, while the others (and the API on top) keep running.
Runs an isolated stack (own state directory and ports), never the shared one."""
from __future__ import annotations

import time
import uuid

import httpx
import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from tests.conftest import stack_exports
from tests.foundation.test_stack import _isolated_env, aether, state_dir  # noqa: F401 - state_dir is a fixture

pytestmark = pytest.mark.slow


def _pid(state_dir, name: str) -> str:
    return (state_dir / "pids" / f"{name}.pid").read_text().strip()


def _status(env) -> dict[str, str]:
    out = aether(env, "stack", "status").stdout
    return {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line.strip()}


def _eventually(check, timeout: float = 60.0):
    """Bounded wait for a reconnecting client; returns the first truthy result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, psycopg.Error):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("not recovered in time")
        time.sleep(0.5)


def test_bounce_kafka_then_postgres_with_the_rest_running(state_dir):
    env = {**_isolated_env(state_dir), "AETHER_API_WORKERS": "1"}
    up = aether(env, "stack", "up", "--services", "infra,api")
    assert up.returncode == 0, up.stdout + up.stderr
    exports = stack_exports(env)
    api = exports["API_URL"]  # the ports are the stack's own pick (port 0)
    pids = {name: _pid(state_dir, name) for name in ("kafka", "prometheus", "api")}
    try:
        # `down --services kafka` stops Kafka and nothing else.
        r = aether(env, "stack", "down", "--services", "kafka")
        assert r.returncode == 0, r.stdout + r.stderr
        status = _status(env)
        assert status["kafka"] == "stopped"
        assert status["postgres"].startswith("running") and status["prometheus"].startswith("running")
        assert _pid(state_dir, "api") == pids["api"]
        with psycopg.connect(exports["DATABASE_URL"]) as conn:
            conn.execute("SELECT 1")

        # `restart kafka` brings it back (with its topic); the rest kept its processes.
        r = aether(env, "stack", "restart", "kafka")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "kafka: ready" in r.stdout and "postgres" not in r.stdout
        topics = AdminClient({"bootstrap.servers": exports["KAFKA_BOOTSTRAP_SERVERS"]}).list_topics(timeout=10).topics
        assert "aetherlink.events" in topics
        assert {n: _pid(state_dir, n) for n in ("prometheus", "api")} == {n: pids[n] for n in ("prometheus", "api")}

        # `restart postgres`: Kafka, Prometheus and the API keep running, and the API serves
        # writes again once it has reconnected.
        kafka_pid = _pid(state_dir, "kafka")
        r = aether(env, "stack", "restart", "postgres")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "postgres" in r.stdout and "kafka" not in r.stdout
        assert _pid(state_dir, "kafka") == kafka_pid and _pid(state_dir, "api") == pids["api"]
        status = _status(env)
        assert all(status[n].startswith("running") for n in ("postgres", "kafka", "prometheus", "api")), status
        tenant = str(uuid.uuid4())
        created = _eventually(lambda: httpx.post(
            f"{api}/api/crm/jobs", json={"title": "after the bounce"},
            headers={"X-Tenant-ID": tenant, "Idempotency-Key": uuid.uuid4().hex}).status_code == 202)
        assert created
    finally:
        aether(env, "stack", "down")
