"""End to end: a real API (2 uvicorn workers, multiprocess metrics, as the stack runs it) takes real
traffic, the real relay publishes the resulting outbox events to Kafka, and a Prometheus of this
test's own scrapes the API every second with the generated rules loaded. Every panel target of the
dashboard must then return data: no panel may show "No data".

The API and relay use the SLO tests' own database (tests/slo/conftest.py), so no other test's relay or outbox rows can change
what is measured here. The stack's shared Prometheus (:9090) is left alone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import psycopg
import pytest

from aether_platform import slo_spec as spec
from aether_platform.db_url import libpq_url
from dashboards_py import build, dashboard
from tests.conftest import REPO, ApiServer
from tests.slo.conftest import OwnPrometheus

# No skip without the binary: `make test` installs it, and a green run must mean the evidence ran.
pytestmark = pytest.mark.slow

DATA_TIMEOUT_S = 90   # the slow rule group (30 s interval) must have run once after data arrived


@pytest.fixture(scope="module")
def api(slo_db, platform_env, tmp_path_factory):
    metrics_dir = tmp_path_factory.mktemp("prom-multiproc")
    env = {**platform_env, "DATABASE_URL": slo_db, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    server = ApiServer(env, tmp_path_factory.mktemp("slo-api"), workers=2).start(timeout=60)
    yield server
    server.close()


def _prometheus(api_port: int, tmp_path) -> OwnPrometheus:
    return OwnPrometheus(tmp_path, {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(build.GENERATED / build.RULES)],
        "scrape_configs": [{"job_name": spec.API_JOB, "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}],
    }).start(timeout=30)


def _traffic(api: ApiServer, jobs: int = 8) -> list[str]:
    tenant = str(uuid.uuid4())
    ids = []
    with httpx.Client(base_url=api.url, timeout=10) as c:
        for _ in range(5):
            assert c.get("/").status_code in (200, 503)
        for i in range(jobs):
            key = str(uuid.uuid4())
            headers = {"X-Tenant-Id": tenant, "Idempotency-Key": key}
            body = {"accountId": None, "title": f"slo e2e job {i}", "status": "Open"}
            r = c.post("/api/crm/jobs", headers=headers, json=body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
            assert c.post("/api/crm/jobs", headers=headers, json=body).headers.get("Idempotent-Replayed") == "true"
        for job_id in ids[:3]:
            assert c.get(f"/api/crm/jobs/{job_id}", headers={"X-Tenant-Id": tenant}).status_code == 200
    return ids


def _run_relay(env: dict) -> None:
    r = subprocess.run([sys.executable, "-m", "aether_platform.relay", "--mode", "batch"], cwd=REPO,
                       env={**env}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def _query(prom: str, expr: str) -> list:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_every_panel_returns_data(api, slo_db, platform_env, tmp_path):
    _traffic(api)
    _run_relay({**os.environ, **platform_env, "DATABASE_URL": slo_db})
    with psycopg.connect(libpq_url(slo_db), autocommit=True) as conn:
        published, attempts = conn.execute(
            "SELECT published_total, attempts_total FROM relay_status WHERE relay = 'outbox-relay'").fetchone()
        assert published >= 8 and attempts >= published
        # Then the relay "stops": a heartbeat 10 minutes old must page, which also gives the
        # firing-alerts table a row through the whole pipeline (exporter → rules → ALERTS).
        conn.execute("UPDATE relay_status SET heartbeat_at = now() - interval '10 minutes'")

    own = _prometheus(api.port, tmp_path)
    prom = own.url
    try:
        exprs = dashboard.panel_exprs(json.loads((build.GENERATED / build.DASHBOARD).read_text()))
        empty = exprs
        deadline = time.monotonic() + DATA_TIMEOUT_S
        while empty and time.monotonic() < deadline:
            time.sleep(2)
            _traffic(api, jobs=2)   # keeps every rate() window non-empty
            # NaN (e.g. a quantile over no writes) is not "No data" to Grafana but is no answer either.
            empty = [(title, expr) for title, expr in exprs
                     if not [r for r in _query(prom, expr) if r["value"][1] != "NaN"]]
        assert not empty, f"panels with no data after {DATA_TIMEOUT_S}s: {empty}"

        availability = _query(prom, spec.slo("api-availability").headline.record)
        assert 0 <= float(availability[0]["value"][1]) <= 1
        age = float(_query(prom, spec.HEARTBEAT_AGE_RECORD)[0]["value"][1])
        assert age > spec.HEARTBEAT_MAX_AGE_SECONDS
        firing = _query(prom, spec.FIRING_ALERTS_EXPR)
        fired = {(a["metric"]["alertname"], a["metric"].get("slo")) for a in firing}
        assert (spec.BURN_TIERS[0].alert, "relay-heartbeat") in fired, firing
        assert not _query(prom, 'ALERTS{alertname="AetherSLOMetricAbsent"}'), "a required metric is missing"
    finally:
        own.stop()
