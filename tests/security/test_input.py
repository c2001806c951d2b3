"""Bad input: limits, hostile identifiers and rate limits, each a 4xx problem that changes nothing."""
from __future__ import annotations

import uuid

import httpx
import orjson
import pytest

from tests.api.conftest import headers, new_key, outbox_rows, raw_request
from tests.conftest import ApiServer


def test_json_nesting_depth_is_limited(client, db, tenant):
    deep = b'{"title": "x", "status": "Open", "n": ' + b"[" * 40 + b"]" * 40 + b"}"
    r = client.post("/api/crm/jobs", content=deep, headers=headers(tenant, new_key(), **{"content-type": "application/json"}))
    assert r.status_code == 422 and r.json()["title"] == "JSON nested too deeply"
    # Brackets inside strings do not count.
    ok = client.post("/api/crm/jobs", json={"title": "[" * 100, "status": "Open"}, headers=headers(tenant, new_key()))
    assert ok.status_code == 202
    assert len(outbox_rows(db, tenant)) == 1


@pytest.mark.parametrize("field,value", [("title", "x" * 201), ("status", "Open" * 100)])
def test_string_lengths_are_limited(client, db, tenant, field, value):
    r = client.post("/api/crm/jobs", json={"title": "ok", "status": "Open", field: value}, headers=headers(tenant, new_key()))
    assert r.status_code == 422
    assert outbox_rows(db, tenant) == []


def test_header_size_is_limited(client, tenant):
    r = client.get("/api/crm/jobs", headers={**headers(tenant), "X-Padding": "p" * 20_000})
    assert r.status_code == 431 and r.headers["content-type"] == "application/problem+json"


def test_sse_filter_length_is_limited(client):
    r = client.get("/crm-events", params={"types": ",".join(f"Type{i}" for i in range(200))})
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    r = client.get("/crm-events", params={"types": "A" * 500})
    assert r.status_code == 400


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1", "' OR 1=1 --", "00000000-0000-0000-0000-00000000000g"])
def test_malformed_uuids_in_paths_are_4xx_problems(client, tenant, bad_id):
    for method in ("GET", "PATCH", "DELETE"):
        r = client.request(method, f"/api/crm/jobs/{bad_id}", json={"status": "Done"} if method == "PATCH" else None,
                           headers=headers(tenant, new_key()))
        assert 400 <= r.status_code < 500, (method, r.status_code)
        assert r.headers["content-type"] == "application/problem+json"


SQL_METACHARACTERS = ["'; DROP TABLE jobs; --", "\" OR \"1\"=\"1", "\\'; SELECT pg_sleep(5); --", "$$; --", "%s %d {}"]


@pytest.mark.parametrize("evil", SQL_METACHARACTERS)
def test_sql_metacharacters_are_stored_verbatim(client, db, tenant, evil):
    account = client.post("/api/crm/accounts", json={"name": evil}, headers=headers(tenant, new_key()))
    assert account.status_code == 202
    contact = client.post("/api/crm/contacts", json={"name": evil, "phone": evil[:50]}, headers=headers(tenant, new_key()))
    assert contact.status_code == 202
    job = client.post("/api/crm/jobs", json={"title": evil}, headers=headers(tenant, new_key()))
    assert job.status_code == 202
    assert client.get(f"/api/crm/jobs/{job.json()['id']}", headers=headers(tenant)).json()["title"] == evil
    assert db.execute("SELECT name FROM accounts WHERE id = %s", (account.json()["id"],)).fetchone() == (evil,)
    assert db.execute("SELECT to_regclass('jobs') IS NOT NULL").fetchone() == (True,)
    listed = client.get("/api/crm/jobs", params={"status": evil}, headers=headers(tenant))
    assert listed.status_code == 422  # not a status; never reaches SQL


def test_invalid_utf8_body_is_a_4xx_problem(api_server, db, tenant):
    status, hdrs, body = raw_request(api_server.url, "POST", "/api/crm/jobs",
                                     [f"X-Tenant-Id: {tenant}".encode(), f"Idempotency-Key: {new_key()}".encode()],
                                     b'{"title": "\xff\xfe broken", "status": "Open"}')
    assert 400 <= status < 500
    assert hdrs["content-type"] == "application/problem+json"
    assert orjson.loads(body)["status"] == status
    assert outbox_rows(db, tenant) == []


def test_invalid_utf8_in_tenant_header_is_400(api_server, db):
    status, hdrs, _ = raw_request(api_server.url, "GET", "/api/crm/jobs", [b"X-Tenant-Id: \xff\xfe"])
    assert status == 400 and hdrs["content-type"] == "application/problem+json"


def test_write_rate_limit_is_per_tenant_with_retry_after(platform_env, tmp_path):
    server = ApiServer({**platform_env, "AETHER_WRITE_RATE_PER_TENANT": "2", "AETHER_WRITE_BURST_PER_TENANT": "3"},
                       tmp_path).start()
    try:
        noisy, quiet = str(uuid.uuid4()), str(uuid.uuid4())
        with httpx.Client(base_url=server.url, timeout=30) as c:
            codes = [c.post("/api/crm/jobs", json={"title": "x"}, headers=headers(noisy, new_key())).status_code
                     for _ in range(6)]
            assert codes[:3] == [202, 202, 202] and 429 in codes[3:]
            limited = c.post("/api/crm/jobs", json={"title": "x"}, headers=headers(noisy, new_key()))
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1
            assert limited.headers["content-type"] == "application/problem+json"
            # Another tenant is not affected, and reads are never limited.
            assert c.post("/api/crm/jobs", json={"title": "x"}, headers=headers(quiet, new_key())).status_code == 202
            assert c.get("/api/crm/jobs", headers=headers(noisy)).status_code == 200
    finally:
        server.close()


@pytest.mark.parametrize("escaped", [r"nul\u0000byte", r"\ud800 lone surrogate", r"bell\u0007"])
def test_unstorable_text_is_422_not_500(client, db, tenant, escaped):
    r = client.post("/api/crm/accounts", content=b'{"name": "' + escaped.encode() + b'"}',
                    headers=headers(tenant, new_key(), **{"content-type": "application/json"}))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert db.execute("SELECT count(*) FROM accounts WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
