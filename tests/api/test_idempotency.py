"""The idempotency behaviours of the IETF draft and Stripe, each against the real API and Postgres."""
from __future__ import annotations

import threading
import uuid

import httpx
import pytest

from tests.api.conftest import headers, new_key, outbox_rows, raw_request

JOB = {"title": "Replace boiler valve", "status": "Open"}


def test_same_key_same_request_replays_exactly(client, db, tenant):
    key = new_key()
    first = client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key))
    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    second = client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key))
    assert second.status_code == 202
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert second.headers["location"] == first.headers["location"]
    assert second.headers["content-type"] == first.headers["content-type"]
    assert db.execute("SELECT count(*) FROM jobs WHERE tenant_id = %s", (tenant,)).fetchone() == (1,)
    assert len(outbox_rows(db, tenant)) == 1


def test_key_order_of_body_fields_does_not_matter(client, tenant):
    key = new_key()
    assert client.post("/api/crm/jobs", content=b'{"title":"A","status":"Open"}',
                       headers=headers(tenant, key, **{"content-type": "application/json"})).status_code == 202
    again = client.post("/api/crm/jobs", content=b'{ "status": "Open", "title": "A" }',
                        headers=headers(tenant, key, **{"content-type": "application/json"}))
    assert again.headers.get("idempotent-replayed") == "true"


def test_same_key_different_body_is_422(client, db, tenant):
    key = new_key()
    assert client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key)).status_code == 202
    r = client.post("/api/crm/jobs", json={**JOB, "title": "Something else"}, headers=headers(tenant, key))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["title"] == "Idempotency-Key reused"
    assert len(outbox_rows(db, tenant)) == 1


def test_same_key_different_path_or_method_is_422(client, db, tenant):
    key = new_key()
    job = client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key)).json()
    other_path = client.post("/api/crm/accounts", json={"name": "Acme"}, headers=headers(tenant, key))
    assert other_path.status_code == 422
    other_method = client.patch(f"/api/crm/jobs/{job['id']}", json={"status": "Done"}, headers=headers(tenant, key))
    assert other_method.status_code == 422
    assert db.execute("SELECT count(*) FROM accounts WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
    assert db.execute("SELECT status FROM jobs WHERE id = %s", (job["id"],)).fetchone() == ("Open",)


def test_parallel_requests_on_one_key_execute_once(api_server, db, tenant):
    """24 truly parallel requests (threads released together): exactly one executes; the rest
    get 409 while it is in flight or the replay once it committed."""
    key = new_key()
    n = 24
    barrier = threading.Barrier(n)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def fire():
        with httpx.Client(base_url=api_server.url, timeout=30) as c:
            barrier.wait()
            r = c.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key))
        with lock:
            results.append(r)

    threads = [threading.Thread(target=fire) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    executed = [r for r in results if r.status_code == 202 and "idempotent-replayed" not in r.headers]
    replayed = [r for r in results if r.headers.get("idempotent-replayed") == "true"]
    in_flight = [r for r in results if r.status_code == 409]
    assert len(executed) == 1
    assert len(executed) + len(replayed) + len(in_flight) == n, [r.status_code for r in results]
    assert all(r.headers["content-type"] == "application/problem+json" for r in in_flight)
    assert all(r.content == executed[0].content for r in replayed)
    assert db.execute("SELECT count(*) FROM jobs WHERE tenant_id = %s", (tenant,)).fetchone() == (1,)
    assert len(outbox_rows(db, tenant)) == 1


def test_in_flight_is_409_while_the_first_transaction_holds_the_key(client, database_url, tenant):
    """Hold the key's advisory lock from another session, as an in-flight request does."""
    import psycopg

    from aether_platform.db_url import libpq_url
    from aether_platform.idempotency import lock_id

    key = new_key()
    with psycopg.connect(libpq_url(database_url)) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id(uuid.UUID(tenant), key),))
        r = client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key))
        assert r.status_code == 409
        assert r.headers["retry-after"] == "1"
        other.rollback()
    # The first "request" died without committing: the key is free, nothing is stuck.
    assert client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key)).status_code == 202


@pytest.mark.parametrize("bad_key", [b"", b" ", b"x" * 201, b"tab\tkey", b"a b", b'"unterminated', b'"quote"inside"',
                                     "caf\u00e9".encode()])
def test_missing_or_malformed_key_is_400(api_server, db, tenant, bad_key):
    import orjson

    status, hdrs, body = raw_request(api_server.url, "POST", "/api/crm/jobs",
                                     [f"X-Tenant-Id: {tenant}".encode(), b"Idempotency-Key: " + bad_key],
                                     orjson.dumps(JOB))
    assert status == 400, (bad_key, status, body)
    assert hdrs["content-type"] == "application/problem+json"
    assert orjson.loads(body)["status"] == 400
    assert outbox_rows(db, tenant) == []


@pytest.mark.parametrize("bad_key", [b"bad\x01key", b"del\x7fkey", b"nul\x00key"])
def test_control_characters_in_key_are_refused_by_the_http_parser(api_server, db, tenant, bad_key):
    """Bytes that HTTP forbids in a field value never reach the app: uvicorn's parser answers 400."""
    import orjson

    status, _, _ = raw_request(api_server.url, "POST", "/api/crm/jobs",
                               [f"X-Tenant-Id: {tenant}".encode(), b"Idempotency-Key: " + bad_key], orjson.dumps(JOB))
    assert status == 400
    assert outbox_rows(db, tenant) == []


def test_missing_key_is_400(client, tenant):
    r = client.post("/api/crm/jobs", json=JOB, headers={"X-Tenant-Id": tenant})
    assert r.status_code == 400
    assert "Idempotency-Key" in r.json()["detail"]


def test_quoted_structured_field_key_equals_bare_key(client, tenant):
    assert client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, '"abc-123"')).status_code == 202
    replay = client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, "abc-123"))
    assert replay.headers.get("idempotent-replayed") == "true"


def test_200_character_key_is_accepted(client, tenant):
    assert client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, "k" * 200)).status_code == 202


@pytest.mark.parametrize("bad_tenant", [None, "", "not-a-uuid", "123"])
def test_missing_or_malformed_tenant_is_400(client, bad_tenant):
    h = {"Idempotency-Key": new_key()}
    if bad_tenant is not None:
        h["X-Tenant-Id"] = bad_tenant
    r = client.post("/api/crm/jobs", json=JOB, headers=h)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"


def test_same_key_under_two_tenants_executes_twice(client, db):
    key = new_key()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    ra = client.post("/api/crm/jobs", json=JOB, headers=headers(a, key))
    rb = client.post("/api/crm/jobs", json=JOB, headers=headers(b, key))
    assert ra.status_code == rb.status_code == 202
    assert "idempotent-replayed" not in rb.headers
    assert ra.json()["id"] != rb.json()["id"]
    assert len(outbox_rows(db, a)) == len(outbox_rows(db, b)) == 1


def test_expired_key_executes_as_new(client, db, tenant):
    key = new_key()
    first = client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key)).json()
    db.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE tenant_id = %s AND key = %s",
               (tenant, key))
    second = client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key))
    assert second.status_code == 202
    assert "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first["id"]
    assert len(outbox_rows(db, tenant)) == 2
    (expires,) = db.execute("SELECT expires_at - created_at FROM idempotency_keys WHERE tenant_id = %s AND key = %s",
                            (tenant, key)).fetchone()
    assert expires.total_seconds() == 24 * 3600


def test_validation_error_is_not_stored_and_key_can_be_retried(client, db, tenant):
    key = new_key()
    bad = client.post("/api/crm/jobs", json={"title": "", "status": "Open"}, headers=headers(tenant, key))
    assert bad.status_code == 422
    assert db.execute("SELECT count(*) FROM idempotency_keys WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
    good = client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key))
    assert good.status_code == 202 and "idempotent-replayed" not in good.headers


def test_domain_error_is_not_stored(client, db, tenant):
    key = new_key()
    missing = client.patch(f"/api/crm/jobs/{uuid.uuid4()}", json={"status": "Done"}, headers=headers(tenant, key))
    assert missing.status_code == 404
    assert db.execute("SELECT count(*) FROM idempotency_keys WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
    assert outbox_rows(db, tenant) == []


def test_server_error_rolls_back_the_claim(client, db, tenant):
    """A 5xx (here: the outbox insert fails inside the transaction) stores nothing and leaves no
    business row behind: the key can be retried."""
    key = new_key()
    db.execute("CREATE OR REPLACE FUNCTION aether_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$"
               " BEGIN IF NEW.tenant_id = '" + tenant + "' THEN RAISE EXCEPTION 'injected failure'; END IF;"
               " RETURN NEW; END $$")
    db.execute("CREATE TRIGGER aether_test_fail BEFORE INSERT ON outbox_events FOR EACH ROW"
               " EXECUTE FUNCTION aether_test_fail()")
    try:
        r = client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key))
    finally:
        db.execute("DROP TRIGGER aether_test_fail ON outbox_events")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in r.text and "injected" not in r.text
    assert db.execute("SELECT count(*) FROM jobs WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM idempotency_keys WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
    retry = client.post("/api/crm/jobs", json=JOB, headers=headers(tenant, key))
    assert retry.status_code == 202 and "idempotent-replayed" not in retry.headers
