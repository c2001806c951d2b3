"""Authentication on: tokens bound to one tenant, 401/403 rules, OIDC JWTs, no tokens in logs."""
from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.api.conftest import new_key

JOB = {"title": "secure job", "status": "Open"}


def auth(token: str, tenant: str | None = None, key: str | None = None) -> dict:
    h = {"Authorization": f"Bearer {token}"}
    if tenant:
        h["X-Tenant-Id"] = tenant
    if key:
        h["Idempotency-Key"] = key
    return h


@pytest.fixture
def c(secure_api):
    with httpx.Client(base_url=secure_api.url, timeout=30) as client:
        yield client


def test_no_token_is_401_with_challenge(c, tokens):
    r = c.post("/api/crm/jobs", json=JOB, headers={"X-Tenant-Id": tokens.tenant_a, "Idempotency-Key": new_key()})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer", "Basic dXNlcjpwYXNz", "Bearer a.b.c"])
def test_bad_token_is_401(c, tokens, header):
    r = c.get("/api/crm/jobs", headers={"Authorization": header, "X-Tenant-Id": tokens.tenant_a})
    assert r.status_code == 401
    assert "Bearer" in r.headers["www-authenticate"]


def test_token_for_a_with_tenant_b_is_403(c, tokens, db):
    r = c.post("/api/crm/jobs", json=JOB, headers=auth(tokens.a, tokens.tenant_b, new_key()))
    assert r.status_code == 403
    assert db.execute("SELECT count(*) FROM jobs WHERE tenant_id = %s", (tokens.tenant_b,)).fetchone() == (0,)


def test_token_for_its_own_tenant_works(c, tokens):
    r = c.post("/api/crm/jobs", json=JOB, headers=auth(tokens.a, tokens.tenant_a, new_key()))
    assert r.status_code == 202
    assert c.get(f"/api/crm/jobs/{r.json()['id']}", headers=auth(tokens.a, tokens.tenant_a)).status_code == 200


def test_operator_token_cannot_use_the_crm_api_but_reads_metrics(c, tokens):
    assert c.get("/api/crm/jobs", headers=auth(tokens.operator, tokens.tenant_a)).status_code == 403
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers=auth(tokens.a)).status_code == 403
    metrics = c.get("/metrics", headers=auth(tokens.operator))
    assert metrics.status_code == 200 and "aether_http_requests_total" in metrics.text


def test_command_center_needs_an_operator_token(c, tokens):
    assert c.get("/ops/crm-events").status_code == 401
    assert c.get("/ops/crm-events", headers=auth(tokens.a)).status_code == 403
    assert c.get("/ops/crm-events", headers=auth(tokens.operator)).status_code == 200


def test_a_token_in_the_url_is_no_credential(c, tokens):
    """URLs end up in proxy logs and browser history: only the header (or the sign-in cookie) counts."""
    assert c.get("/ops/crm-events", params={"access_token": tokens.operator}).status_code == 401
    assert c.get("/crm-events", params={"access_token": tokens.a}).status_code == 401


def test_sign_in_form_sets_a_scoped_httponly_ticket_cookie(c, tokens):
    page = c.get("/ops/crm-events", headers={"Accept": "text/html"})
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    assert 'method="post" action="/ops/session"' in page.text
    assert c.post("/ops/session", data={"token": tokens.a}).status_code == 403  # a tenant's token
    bad = c.post("/ops/session", data={"token": "nope"})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers
    r = c.post("/ops/session", data={"token": tokens.operator, "next": "https://evil.test/x"})
    assert r.status_code == 303 and r.headers["location"] == "/ops/crm-events"
    cookies = r.headers.get_list("set-cookie")
    assert sorted(ck.split("; Path=")[1].split(";")[0] for ck in cookies) == ["/crm-events", "/ops"]
    for ck in cookies:
        assert "HttpOnly" in ck and "SameSite=Strict" in ck and tokens.operator not in ck
    ticket = cookies[0].split(";")[0].split("=", 1)[1]
    jar = {"Cookie": f"aether_stream_ticket={ticket}"}
    with httpx.Client(base_url=c.base_url, timeout=30) as fresh:
        assert fresh.get("/ops/crm-events", headers=jar).status_code == 200
        assert fresh.get("/ops/session", headers=jar).json()["operator"] is True
        with fresh.stream("GET", "/crm-events", headers=jar) as stream:
            assert stream.status_code == 200
        # the ticket reads the stream and the page, nothing else
        assert fresh.get("/metrics", headers=jar).status_code == 401
        assert fresh.get("/api/crm/jobs", headers={**jar, "X-Tenant-Id": tokens.tenant_a}).status_code == 401
        tampered = {"Cookie": f"aether_stream_ticket={ticket[:-2]}xx"}
        assert fresh.get("/ops/session", headers=tampered).status_code == 401
        assert fresh.get("/ops/crm-events", headers=tampered).status_code == 401


def test_health_and_docs_stay_public(c):
    assert c.get("/").status_code in (200, 503)
    assert c.get("/openapi.json").status_code == 200


def test_oidc_jwt_with_tenant_claim(c, tokens):
    token = tokens.jwt(tokens.tenant_a)
    r = c.post("/api/crm/jobs", json=JOB, headers=auth(token, tokens.tenant_a, new_key()))
    assert r.status_code == 202
    assert c.get("/api/crm/jobs", headers=auth(token, tokens.tenant_b)).status_code == 403


@pytest.mark.parametrize("variant", ["expired", "wrong_audience", "wrong_issuer", "wrong_key", "unknown_kid"])
def test_oidc_jwt_checks(c, tokens, variant):
    kwargs = {"expired": {"exp_in": -60}, "wrong_audience": {"aud": "someone-else"},
              "wrong_issuer": {"iss": "https://evil.test/"}, "wrong_key": {"key": tokens.other_key},
              "unknown_kid": {"kid": "k9"}}[variant]
    r = c.get("/api/crm/jobs", headers=auth(tokens.jwt(tokens.tenant_a, **kwargs), tokens.tenant_a))
    assert r.status_code == 401, variant


def test_logs_never_contain_tokens(c, tokens, secure_api):
    """Valid and invalid tokens, in the header and in the query (which is never read): the
    rejections are logged, with their request id and tenant, and no token value appears anywhere
    in the log."""
    bad_header, bad_query = f"tok-bad-{uuid.uuid4().hex}", f"tok-badq-{uuid.uuid4().hex}"
    valid_jwt = tokens.jwt(tokens.tenant_a)
    forged_jwt = tokens.jwt(tokens.tenant_a, key=tokens.other_key)
    ids = {name: f"test-{name}-{uuid.uuid4().hex}" for name in ("header", "query", "jwt")}

    def rid(name: str) -> dict:
        return {"X-Request-Id": ids[name]}

    r = c.get("/api/crm/jobs", headers={**auth(bad_header, tokens.tenant_a), **rid("header")})
    assert r.status_code == 401 and r.headers["x-request-id"] == ids["header"]
    assert c.get("/api/crm/jobs", headers=auth(tokens.a, tokens.tenant_a)).status_code == 200
    assert c.get("/api/crm/jobs", headers=auth(valid_jwt, tokens.tenant_a)).status_code == 200
    assert c.get("/api/crm/jobs", headers={**auth(forged_jwt, tokens.tenant_a), **rid("jwt")}).status_code == 401
    with c.stream("GET", "/crm-events", headers=auth(tokens.a)) as stream:
        assert stream.status_code == 200
    assert c.get("/crm-events", params={"access_token": bad_query, "tenant": tokens.tenant_b},
                 headers=rid("query")).status_code == 401
    c.get("/ops/crm-events", params={"access_token": tokens.operator})
    c.post("/ops/session", data={"token": tokens.operator})
    c.post("/ops/session", data={"token": tokens.operator + "x"})

    lines = _json_lines(secure_api.log_path)
    rejected = {line.get("request_id"): line for line in lines
                if line["logger"] == "aether.api.auth" and "reject" in line["message"]}
    assert {ids["header"], ids["jwt"]} <= set(rejected), f"rejections logged: {sorted(rejected)}"
    assert rejected[ids["header"]]["tenant"] == tokens.tenant_a
    assert rejected[ids["header"]]["level"] == "info"
    text = secure_api.log_path.read_text()
    for secret in (tokens.a, tokens.b, tokens.operator, bad_header, bad_query, valid_jwt, forged_jwt,
                   valid_jwt.rsplit(".", 1)[1], forged_jwt.rsplit(".", 1)[1]):
        assert secret not in text


def _json_lines(path) -> list[dict]:
    """The server's log, every line a JSON object. A rejection is logged before its 401 is sent,
    so the lines of the requests above are all there."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_remembered_jwt_still_expires(c, tokens):
    """Verified JWTs are remembered (verifying costs CPU), but never past their `exp`."""
    import time

    token = tokens.jwt(tokens.tenant_a, exp_in=2)
    for _ in range(3):
        assert c.get("/api/crm/jobs", headers=auth(token, tokens.tenant_a)).status_code == 200
    time.sleep(3)
    assert c.get("/api/crm/jobs", headers=auth(token, tokens.tenant_a)).status_code == 401
