"""The create fast path (api.fast_create) answers exactly as the routed FastAPI endpoint would.

Two real API servers on one database: the default one (fast path on) and one with
AETHER_API_FAST_CREATE=off. Whatever the fast path declines must reach the route untouched, and
whatever it serves must be interchangeable with the route's answer (same replay bytes, same
errors). The in-process tests show that it does serve valid creates itself and declines the rest.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid

import httpx
import orjson
import psycopg
import pytest

from aether_platform import idempotency
from aether_platform.db_url import libpq_url
from tests.api.conftest import headers, new_key, outbox_rows
from tests.conftest import ApiServer

JOB = {"title": "Replace boiler valve", "status": "Open"}


@pytest.fixture(scope="module")
def routed_server(platform_env, tmp_path_factory):
    server = ApiServer({**platform_env, "AETHER_API_FAST_CREATE": "off"}, tmp_path_factory.mktemp("routed")).start()
    yield server
    server.stop()


def _normalised(r: httpx.Response) -> tuple:
    hdrs = {k: v for k, v in r.headers.items() if k not in ("date", "server")}
    return r.status_code, hdrs, r.content


# Requests the fast path must decline; each pair is (extra headers, body bytes).
DECLINED = [
    pytest.param({}, b'{"title": ""}', id="invalid-body"),
    pytest.param({}, b'{"title": "x", "colour": "red"}', id="unknown-field"),
    pytest.param({}, b'{"title": "x",', id="malformed-json"),
    pytest.param({}, b'[1, 2]', id="not-an-object"),
    pytest.param({}, b'', id="empty-body"),
    pytest.param({"content-type": "text/plain"}, orjson.dumps(JOB), id="text-plain"),
    pytest.param({"x-tenant-id": "not-a-uuid"}, orjson.dumps(JOB), id="bad-tenant"),
    pytest.param({"idempotency-key": "has space"}, orjson.dumps(JOB), id="bad-key"),
    pytest.param({"idempotency-key": None}, orjson.dumps(JOB), id="missing-key"),
    pytest.param({"x-tenant-id": None}, orjson.dumps(JOB), id="missing-tenant"),
]


@pytest.mark.parametrize("extra,body", DECLINED)
def test_declined_requests_get_the_routes_answer(api_server, routed_server, extra, body):
    def send(url):
        h = {"content-type": "application/json", "x-tenant-id": str(uuid.uuid4()), "idempotency-key": new_key()}
        h.update(extra)
        h = {k: v for k, v in h.items() if v is not None}
        return httpx.post(url + "/api/crm/jobs", content=body, headers=h, timeout=10)

    fast, routed = send(api_server.url), send(routed_server.url)
    assert 400 <= fast.status_code < 500
    assert _normalised(fast) == _normalised(routed)


@pytest.mark.parametrize("path,body", [("/api/crm/jobs", JOB), ("/api/crm/accounts", {"name": "Acme"}),
                                       ("/api/crm/contacts", {"name": "Ada", "email": "ada@example.com"})])
def test_a_fast_create_replays_through_the_route_and_back(api_server, routed_server, db, tenant, path, body):
    key = new_key()
    created = httpx.post(api_server.url + path, json=body, headers=headers(tenant, key))
    assert created.status_code == 202
    replayed = httpx.post(routed_server.url + path, json=body, headers=headers(tenant, key))
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.content == created.content
    assert replayed.headers["location"] == created.headers["location"]

    key2 = new_key()
    routed = httpx.post(routed_server.url + path, json=body, headers=headers(tenant, key2))
    fast_replay = httpx.post(api_server.url + path, json=body, headers=headers(tenant, key2))
    assert fast_replay.headers["idempotent-replayed"] == "true"
    assert fast_replay.content == routed.content
    assert len(outbox_rows(db, tenant)) == 2


def test_fast_and_routed_creates_have_the_same_shape(api_server, routed_server, db, tenant):
    fast = httpx.post(api_server.url + "/api/crm/jobs", json=JOB, headers=headers(tenant, new_key()))
    routed = httpx.post(routed_server.url + "/api/crm/jobs", json=JOB, headers=headers(tenant, new_key()))
    assert fast.status_code == routed.status_code == 202
    assert set(fast.headers) - {"date"} == set(routed.headers) - {"date"}
    a, b = fast.json(), routed.json()
    assert a.keys() == b.keys()
    assert {k: a[k] for k in ("tenantId", "title", "status", "accountId", "version")} == \
           {k: b[k] for k in ("tenantId", "title", "status", "accountId", "version")}
    rows = outbox_rows(db, tenant)
    assert [r[0] for r in rows] == ["JobCreated", "JobCreated"]
    assert rows[0][1].keys() == rows[1][1].keys()


def test_unknown_account_is_the_same_422(api_server, routed_server, tenant):
    body = {**JOB, "accountId": str(uuid.uuid4())}
    fast = httpx.post(api_server.url + "/api/crm/jobs", json=body, headers=headers(tenant, new_key()))
    routed = httpx.post(routed_server.url + "/api/crm/jobs", json=body, headers=headers(tenant, new_key()))
    assert fast.status_code == 422
    assert _normalised(fast) == _normalised(routed)


def test_a_record_committed_during_the_one_statement_write_is_replayed(api_server, database_url, db, tenant):
    """The race the unique index guards: another transaction commits the key's record after the
    fast statement took its snapshot. The statement must roll back whole (no job, no event) and
    the request be answered from that record."""
    key = new_key()
    path = "/api/crm/jobs"
    stored = orjson.dumps({"stored": True})
    holder = psycopg.connect(libpq_url(database_url))
    # Not holding the advisory lock, the way a writer looks between its commit and unlock.
    holder.execute(
        "INSERT INTO idempotency_keys (tenant_id, key, request_path, request_method, status_code, response_body,"
        " created_at, expires_at, request_fingerprint, response_headers)"
        " VALUES (%s, %s, %s, 'POST', 202, %s, now(), now() + interval '1 day', %s, %s::jsonb)",
        (tenant, key, path, stored.decode(), idempotency.fingerprint("POST", path, JOB),
         '{"content-type": "application/json"}'))
    result: dict = {}

    def post():
        result["r"] = httpx.post(api_server.url + path, json=JOB, headers=headers(tenant, key), timeout=30)

    t = threading.Thread(target=post)
    t.start()
    time.sleep(1.0)
    assert "r" not in result, "the insert should wait on the uncommitted record"
    holder.commit()
    holder.close()
    t.join(30)
    r = result["r"]
    assert r.status_code == 202
    assert r.headers["idempotent-replayed"] == "true"
    assert r.content == stored
    assert db.execute("SELECT count(*) FROM jobs WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
    assert outbox_rows(db, tenant) == []


# ---- in process: which requests the fast path serves itself ------------------------------------

def _run_fast_create(database_url: str, request_headers: list[tuple[bytes, bytes]], body: bytes):
    """Drive FastCreate with one request; returns (status or None, what the downstream app got)."""
    from psycopg_pool import AsyncConnectionPool

    from api.rate_limit import TenantRateLimiter
    from aether_platform.settings import get_settings
    from api.db import StatementPool
    from api.fast_create import FastCreate

    downstream: dict = {}

    async def routed_app(scope, receive, send):
        downstream["body"] = (await receive())["body"]

    async def main():
        pool = AsyncConnectionPool(libpq_url(database_url), min_size=1, max_size=1, open=False,
                                   kwargs={"autocommit": True})
        await pool.open(wait=True)
        statements = StatementPool(libpq_url(database_url), max_size=1)
        await statements.open()
        state = type("State", (), {"settings": get_settings(), "pool": pool, "statements": statements,
                                   "write_limiter": TenantRateLimiter(0, 1)})()
        sent: list = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/api/crm/jobs", "headers": request_headers,
                 "query_string": b"", "state": {}}
        try:
            await FastCreate(routed_app, state)(scope, receive, send)
        finally:
            await statements.close()
            await pool.close()
        return sent[0]["status"] if sent else None

    return asyncio.run(main()), downstream


def test_the_fast_path_serves_a_valid_create_itself(database_url, db, tenant):
    status, downstream = _run_fast_create(
        database_url, [(b"content-type", b"application/json"), (b"x-tenant-id", tenant.encode()),
                       (b"idempotency-key", new_key().encode())], orjson.dumps(JOB))
    assert status == 202
    assert downstream == {}
    assert [r[0] for r in outbox_rows(db, tenant)] == ["JobCreated"]


def test_the_fast_path_hands_what_it_declines_to_the_route_unchanged(database_url, db, tenant):
    body = b'{"title": "x", "colour": "red"}'
    status, downstream = _run_fast_create(
        database_url, [(b"content-type", b"application/json"), (b"x-tenant-id", tenant.encode()),
                       (b"idempotency-key", new_key().encode())], body)
    assert status is None
    assert downstream == {"body": body}
    assert outbox_rows(db, tenant) == []
