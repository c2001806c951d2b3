"""The cross-tenant matrix: tenant A's credentials against tenant B's ids, on every endpoint
(list, get, patch, delete of each resource, and the stream). All denied, nothing changes."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.api.conftest import new_key
from tests.security.test_auth import auth
from tests.stream.conftest import EventProducer, mine, stream_at
from tests.stream.sse_client import SseClient

RESOURCES = {"accounts": {"name": "B Ltd"}, "jobs": {"title": "B's job", "status": "Open"},
             "contacts": {"name": "Bea", "email": "bea@example.com"}}
CHANGES = {"accounts": {"name": "pwned"}, "jobs": {"status": "Cancelled"}, "contacts": {"name": "pwned"}}


@pytest.fixture(scope="module")
def b_rows(secure_api, tokens):
    rows = {}
    with httpx.Client(base_url=secure_api.url, timeout=30) as c:
        for plural, body in RESOURCES.items():
            r = c.post(f"/api/crm/{plural}", json=body, headers=auth(tokens.b, tokens.tenant_b, new_key()))
            assert r.status_code == 202, r.text
            rows[plural] = r.json()
    return rows


def _snapshot(db, tenant: str):
    return [db.execute(f"SELECT * FROM {t} WHERE tenant_id = %s ORDER BY id", (tenant,)).fetchall()
            for t in ("accounts", "jobs", "contacts", "outbox_events")]


@pytest.mark.parametrize("plural", list(RESOURCES))
@pytest.mark.parametrize("as_tenant", ["a", "b"], ids=["header-A", "header-B"])
def test_tenant_a_cannot_touch_tenant_b(secure_api, tokens, b_rows, db, plural, as_tenant):
    """With A's token: using A's header the row does not exist (404, list empty of it); using
    B's header the token does not match (403)."""
    header_tenant = tokens.tenant_a if as_tenant == "a" else tokens.tenant_b
    expected = 404 if as_tenant == "a" else 403
    target = b_rows[plural]["id"]
    before = _snapshot(db, tokens.tenant_b)
    with httpx.Client(base_url=secure_api.url, timeout=30) as c:
        listing = c.get(f"/api/crm/{plural}", headers=auth(tokens.a, header_tenant))
        if as_tenant == "a":
            assert listing.status_code == 200
            assert target not in {i["id"] for i in listing.json()["items"]}
        else:
            assert listing.status_code == 403
        assert c.get(f"/api/crm/{plural}/{target}", headers=auth(tokens.a, header_tenant)).status_code == expected
        assert c.patch(f"/api/crm/{plural}/{target}", json=CHANGES[plural],
                       headers=auth(tokens.a, header_tenant, new_key())).status_code == expected
        assert c.delete(f"/api/crm/{plural}/{target}",
                        headers=auth(tokens.a, header_tenant, new_key())).status_code == expected
    assert _snapshot(db, tokens.tenant_b) == before


def test_stream_shows_only_the_tokens_tenant_whatever_the_query(secure_api, tokens, kafka_bootstrap, topic):
    producer = EventProducer(kafka_bootstrap, topic)
    since_ms = int(time.time() * 1000) - 60_000
    url = f"{secure_api.url}/crm-events?tenant={tokens.tenant_b}&since={since_ms}"
    own_b = f"{secure_api.url}/crm-events?tenant={tokens.tenant_b}&since={since_ms}"
    with SseClient(url, headers={"Authorization": f"Bearer {tokens.a}"}) as client, \
            SseClient(own_b, headers={"Authorization": f"Bearer {tokens.b}"}) as b_client:
        client.wait(lambda c: c.status is not None, what="response")
        assert client.status == 200
        sent_a = [producer.job(tokens.tenant_a, title=f"a{i}") for i in range(5)]
        sent_b = [producer.job(tokens.tenant_b, title=f"b{i}") for i in range(5)]
        producer.flush()
        # B's events were on the stream (B's own client got them), and A's client has gone past
        # the end of the topic (its cursor), so it had every chance to receive them.
        b_client.wait(lambda c: len(mine(c, tokens.tenant_b)) >= len(sent_b), what="tenant B events on B's stream")
        client.wait(lambda c: len(mine(c, tokens.tenant_a)) >= len(sent_a), what="tenant A events")
        ends = [high for _low, high in producer.watermarks()]
        client.wait(lambda c: stream_at(c, ends), what="A's stream to pass the end of the topic")
        tenants = {(e["value"] or {}).get("TenantId") for e in client.events()}
        assert tenants == {tokens.tenant_a}
        assert mine(client, tokens.tenant_b) == []


def test_stream_without_token_is_401(secure_api):
    r = httpx.get(f"{secure_api.url}/crm-events", timeout=10)
    assert r.status_code == 401
