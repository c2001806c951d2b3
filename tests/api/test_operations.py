"""Operations: metrics, size limits, health, and a database outage on a real, separate Postgres."""
from __future__ import annotations

import time

import httpx

from tests.api.conftest import headers, new_key
from tests.conftest import ApiServer, refused_port


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_requests_writes_replays_and_conflicts(client, tenant):
    before = client.get("/metrics").text
    key = new_key()
    client.post("/api/crm/jobs", json={"title": "m"}, headers=headers(tenant, key))
    client.post("/api/crm/jobs", json={"title": "m"}, headers=headers(tenant, key))
    client.post("/api/crm/jobs", json={"title": "other"}, headers=headers(tenant, key))
    after = client.get("/metrics").text
    assert _metric(after, "aether_http_requests_total", route="/api/crm/jobs", method="POST", status="202") - \
        _metric(before, "aether_http_requests_total", route="/api/crm/jobs", method="POST", status="202") == 2
    assert _metric(after, "aether_outbox_write_duration_seconds_count", aggregate="job") - \
        _metric(before, "aether_outbox_write_duration_seconds_count", aggregate="job") == 1
    assert _metric(after, "aether_idempotency_replays_total") - _metric(before, "aether_idempotency_replays_total") == 1
    assert _metric(after, "aether_idempotency_conflicts_total", reason="mismatch") - \
        _metric(before, "aether_idempotency_conflicts_total", reason="mismatch") == 1
    assert "aether_http_request_duration_seconds_bucket" in after


def test_oversized_body_is_413(client, db, tenant):
    big = {"title": "x", "status": "Open", "pad": "y" * (70 * 1024)}
    r = client.post("/api/crm/jobs", json=big, headers=headers(tenant, new_key()))
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"title": "x", "pad": "'
        for _ in range(100):
            yield b"z" * 1024
        yield b'"}'

    r = client.post("/api/crm/jobs", content=chunks(), headers=headers(tenant, new_key(),
                                                                      **{"content-type": "application/json"}))
    assert r.status_code == 413
    assert db.execute("SELECT count(*) FROM jobs WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)


def test_health_is_ok_with_db_and_kafka(client):
    body = client.get("/").json()
    assert body["status"] == "ok"
    assert {"service", "status", "kafka_brokers", "topic", "group"} <= set(body)


def test_health_is_degraded_503_without_kafka(platform_env, tmp_path):
    with refused_port() as nowhere:
        server = ApiServer({**platform_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{nowhere}"}, tmp_path).start()
        try:
            r = httpx.get(server.url + "/", timeout=10)
            assert r.status_code == 503
            assert r.json()["status"] == "degraded" and r.json()["kafka"] == "unreachable"
        finally:
            server.close()


def test_database_down_is_503_with_retry_after_and_recovers(own_postgres, platform_env, tmp_path, tenant):
    url, stack = own_postgres
    server = ApiServer({**platform_env, "DATABASE_URL": url}, tmp_path).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/api/crm/jobs", json={"title": "before"}, headers=headers(tenant, new_key())).status_code == 202
            stack("down")
            key = new_key()
            down = c.post("/api/crm/jobs", json={"title": "during"}, headers=headers(tenant, key))
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == "2"
            assert down.headers["content-type"] == "application/problem+json"
            assert c.get("/api/crm/jobs", headers=headers(tenant)).status_code == 503
            assert c.get("/").status_code == 503
            assert c.get("/readyz").json()["database"] == "unreachable" and c.get("/readyz").status_code == 503
            assert c.get("/livez").status_code == 200
            stack("up")
            deadline = time.monotonic() + 30
            while True:  # recovers by itself: no restart of the API
                r = c.post("/api/crm/jobs", json={"title": "during"}, headers=headers(tenant, key))
                if r.status_code == 202 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert r.status_code == 202, r.text
            # Reads use the other pool (psycopg), which reconnects on its own schedule: it too
            # recovers by itself, within the same bound.
            while (listing := c.get("/api/crm/jobs", headers=headers(tenant))).status_code == 503 \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
            assert listing.status_code == 200, listing.text
            titles = [j["title"] for j in listing.json()["items"]]
            assert sorted(titles) == ["before", "during"]
            assert c.get("/readyz").status_code == 200
    finally:
        server.close()
