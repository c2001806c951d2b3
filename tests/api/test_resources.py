"""CRM resources: create (202), read, list, patch, delete; tenant isolation; outbox rows."""
from __future__ import annotations

import uuid

import pytest

from tests.api.conftest import headers, new_key, outbox_rows


def post(client, tenant, path, body):
    r = client.post(path, json=body, headers=headers(tenant, new_key()))
    assert r.status_code == 202, r.text
    return r.json()


def test_create_job_commits_row_and_seed_shaped_event(client, db, tenant):
    job = post(client, tenant, "/api/crm/jobs", {"accountId": None, "title": "Inspect heat pump", "status": "Scheduled"})
    uuid.UUID(job["id"])
    assert job["title"] == "Inspect heat pump" and job["status"] == "Scheduled" and job["tenantId"] == tenant
    [(etype, payload, key, event_id)] = outbox_rows(db, tenant)
    assert etype == "JobCreated"
    assert key == job["id"]
    assert isinstance(event_id, uuid.UUID)
    assert set(payload) == {"Type", "TenantId", "JobId", "Title", "Status", "Ts"}
    assert payload["JobId"] == job["id"] and payload["TenantId"] == tenant and payload["Status"] == "Scheduled"
    assert payload["Ts"].endswith("Z")


def test_accounts_and_contacts_write_their_events(client, db, tenant):
    account = post(client, tenant, "/api/crm/accounts", {"name": "Acme Heating"})
    contact = post(client, tenant, "/api/crm/contacts",
                   {"accountId": account["id"], "name": "Ada", "email": "ada@example.com", "phone": "+44 1"})
    assert contact["accountId"] == account["id"]
    rows = outbox_rows(db, tenant)
    assert [r[0] for r in rows] == ["AccountCreated", "ContactCreated"]
    assert rows[0][1]["AccountId"] == account["id"] and rows[0][1]["Name"] == "Acme Heating"
    assert rows[1][1]["ContactId"] == contact["id"] and rows[1][2] == contact["id"]


def test_patch_and_delete_job_write_updated_and_deleted(client, db, tenant):
    job = post(client, tenant, "/api/crm/jobs", {"title": "Service", "status": "Open"})
    r = client.patch(f"/api/crm/jobs/{job['id']}", json={"status": "InProgress"}, headers=headers(tenant, new_key()))
    assert r.status_code == 200
    assert r.json()["status"] == "InProgress" and r.json()["version"] == 2 and r.json()["title"] == "Service"
    d = client.delete(f"/api/crm/jobs/{job['id']}", headers=headers(tenant, new_key()))
    assert d.status_code == 204
    assert client.get(f"/api/crm/jobs/{job['id']}", headers=headers(tenant)).status_code == 404
    rows = outbox_rows(db, tenant)
    assert [r[0] for r in rows] == ["JobCreated", "JobUpdated", "JobDeleted"]
    assert {r[2] for r in rows} == {job["id"]}
    assert rows[1][1]["Status"] == "InProgress"
    assert len({r[3] for r in rows}) == 3  # distinct event ids


def test_get_and_list_are_tenant_scoped(client, db):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    job_a = post(client, a, "/api/crm/jobs", {"title": "A's job", "status": "Open"})
    post(client, b, "/api/crm/jobs", {"title": "B's job", "status": "Open"})
    assert client.get(f"/api/crm/jobs/{job_a['id']}", headers=headers(a)).status_code == 200
    foreign = client.get(f"/api/crm/jobs/{job_a['id']}", headers=headers(b))
    assert foreign.status_code == 404 and foreign.headers["content-type"] == "application/problem+json"
    assert [j["title"] for j in client.get("/api/crm/jobs", headers=headers(b)).json()["items"]] == ["B's job"]
    # Changing or deleting another tenant's job is a 404 and changes nothing.
    assert client.patch(f"/api/crm/jobs/{job_a['id']}", json={"status": "Done"},
                        headers=headers(b, new_key())).status_code == 404
    assert client.delete(f"/api/crm/jobs/{job_a['id']}", headers=headers(b, new_key())).status_code == 404
    assert db.execute("SELECT status FROM jobs WHERE id = %s", (job_a["id"],)).fetchone() == ("Open",)
    assert [r[0] for r in outbox_rows(db, b)] == ["JobCreated"]  # only its own create


def test_job_cannot_reference_another_tenants_account(client, db):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    account_a = post(client, a, "/api/crm/accounts", {"name": "A Ltd"})
    r = client.post("/api/crm/jobs", json={"accountId": account_a["id"], "title": "x", "status": "Open"},
                    headers=headers(b, new_key()))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert outbox_rows(db, b) == []


def test_account_with_jobs_cannot_be_deleted(client, tenant):
    account = post(client, tenant, "/api/crm/accounts", {"name": "Busy Ltd"})
    post(client, tenant, "/api/crm/jobs", {"accountId": account["id"], "title": "x", "status": "Open"})
    r = client.delete(f"/api/crm/accounts/{account['id']}", headers=headers(tenant, new_key()))
    assert r.status_code == 409


def test_list_filters_and_cursor_pagination(client, tenant):
    account = post(client, tenant, "/api/crm/accounts", {"name": "Paged"})
    created = [post(client, tenant, "/api/crm/jobs", {"accountId": account["id"] if i % 2 else None,
                                                      "title": f"job {i}", "status": "Done" if i % 3 == 0 else "Open"})
               for i in range(7)]
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/crm/jobs", params=params, headers=headers(tenant)).json()
        assert len(page["items"]) <= 3
        seen += [j["id"] for j in page["items"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == [j["id"] for j in reversed(created)]  # newest first, no gap, no repeat
    done = client.get("/api/crm/jobs", params={"status": "Done"}, headers=headers(tenant)).json()["items"]
    assert {j["id"] for j in done} == {j["id"] for i, j in enumerate(created) if i % 3 == 0}
    by_account = client.get("/api/crm/jobs", params={"accountId": account["id"]}, headers=headers(tenant)).json()
    assert {j["id"] for j in by_account["items"]} == {j["id"] for i, j in enumerate(created) if i % 2}


@pytest.mark.parametrize("limit", [0, 201, -1])
def test_page_size_is_bounded(client, tenant, limit):
    r = client.get("/api/crm/jobs", params={"limit": limit}, headers=headers(tenant))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_bad_cursor_is_400(client, tenant):
    r = client.get("/api/crm/jobs", params={"cursor": "not-a-cursor"}, headers=headers(tenant))
    assert r.status_code == 400


@pytest.mark.parametrize("body", [
    {"title": "x", "status": "Open", "unknown": 1},  # unknown fields are rejected
    {"title": "x", "status": "Bogus"},
    {"title": "", "status": "Open"},
    {"title": "x" * 201, "status": "Open"},
    {"status": "Open"},
    {"title": "x", "accountId": "not-a-uuid"},
    [],
])
def test_invalid_bodies_are_422_problems(client, db, tenant, body):
    r = client.post("/api/crm/jobs", json=body, headers=headers(tenant, new_key()))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert outbox_rows(db, tenant) == []


def test_malformed_json_is_a_4xx_problem(client, db, tenant):
    r = client.post("/api/crm/jobs", content=b'{"title": ', headers=headers(tenant, new_key(),
                                                                              **{"content-type": "application/json"}))
    assert r.status_code in (400, 422)
    assert r.headers["content-type"] == "application/problem+json"
    assert outbox_rows(db, tenant) == []


def test_patch_must_change_something_and_not_null_required_fields(client, tenant):
    job = post(client, tenant, "/api/crm/jobs", {"title": "t", "status": "Open"})
    assert client.patch(f"/api/crm/jobs/{job['id']}", json={}, headers=headers(tenant, new_key())).status_code == 422
    assert client.patch(f"/api/crm/jobs/{job['id']}", json={"title": None},
                        headers=headers(tenant, new_key())).status_code == 422


def test_traceparent_is_carried_into_the_outbox(client, db, tenant):
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    client.post("/api/crm/jobs", json={"title": "traced"}, headers=headers(tenant, new_key(), traceparent=tp))
    assert db.execute("SELECT traceparent FROM outbox_events WHERE tenant_id = %s", (tenant,)).fetchone() == (tp,)


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/crm/jobs", "/api/crm/jobs/{item_id}", "/api/crm/accounts", "/api/crm/contacts"} <= set(spec["paths"])
    post_op = spec["paths"]["/api/crm/jobs"]["post"]
    assert "202" in post_op["responses"]
    assert {p["name"] for p in post_op["parameters"]} >= {"X-Tenant-Id", "Idempotency-Key"}
    assert client.get("/docs").status_code == 200
