"""The create fast path (api.fast_create) answers exactly as FastAPI's handling of the same route would.

Two real API servers on one database: the default one (fast path on) and one with
AETHER_API_FAST_CREATE=off. Whatever the fast path declines must reach the route untouched, and
whatever it serves must be interchangeable with the route's answer (same replay bytes, same
errors). The in-process tests show that it serves valid creates itself, declines the rest, and
steps aside for a route with any input it cannot solve.
"""
from __future__ import annotations

import threading
import time
import uuid

import httpx
import orjson
import psycopg
import pytest

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from aether_platform import idempotency
from aether_platform.db_url import libpq_url
from api import problems
from api.deps import idempotency_key, tenant_id, traceparent
from api.fast_create import FastCreate, FastCreateRoute
from api.problems import Problem
from tests.api.conftest import headers, new_key, outbox_rows
from tests.conftest import ApiServer

JOB = {"title": "Replace boiler valve", "status": "Open"}


@pytest.fixture(scope="module")
def routed_server(platform_env, tmp_path_factory):
    server = ApiServer({**platform_env, "AETHER_API_FAST_CREATE": "off"}, tmp_path_factory.mktemp("routed")).start()
    yield server
    server.close()


def _normalised(r: httpx.Response) -> tuple:
    # The date, and the request id every answer carries (api.request_context), differ by design.
    hdrs = {k: v for k, v in r.headers.items() if k not in ("date", "server", "x-request-id")}
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


# ---- in process: the route's own definition decides what the fast path may serve ---------------

class _Body(BaseModel):
    model_config = {"extra": "forbid"}
    title: str = Field(min_length=1)


async def _refuse():
    raise Problem(418, "Refused", "A check added to the create route.")


def _app(*extra_dependencies) -> FastAPI:
    """A create-shaped route on FastCreateRoute: the same header dependencies as the CRM creates,
    plus whatever a test adds to it."""
    async def create(body: _Body, request: Request, tenant: Annotated[uuid.UUID, Depends(tenant_id)],
                     key: Annotated[str, Depends(idempotency_key)],
                     trace: Annotated[str | None, Depends(traceparent)]):
        return JSONResponse({"tenant": str(tenant), "key": key, "title": body.title,
                             "raw": (await request.body()).decode()}, status_code=202)

    app = FastAPI()
    app.add_middleware(FastCreate)
    problems.install(app)
    app.router.add_api_route("/api/crm/things", create, methods=["POST"], route_class_override=FastCreateRoute,
                             dependencies=[Depends(d) for d in extra_dependencies])
    return app


def _post(app: FastAPI, body: bytes, **extra):
    """The answer to a request sent after a first valid create to the same path: the router has
    then chosen the route once, which is when the fast path starts serving it."""
    from fastapi.testclient import TestClient

    def headers():
        return {"content-type": "application/json", "x-tenant-id": str(uuid.uuid4()), "idempotency-key": new_key()}

    with TestClient(app) as client:
        client.post("/api/crm/things", content=b'{"title": "first"}', headers=headers())
        return client.post("/api/crm/things", content=body, headers={**headers(), **extra})


@pytest.fixture
def fastapi_solves(monkeypatch) -> list:
    """Records each request whose dependencies FastAPI's own machinery solved."""
    import fastapi.routing

    solved: list = []
    original = fastapi.routing.solve_dependencies

    async def counting(*args, **kwargs):
        solved.append(kwargs.get("request"))
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    return solved


def test_the_fast_path_serves_a_valid_create_itself(fastapi_solves):
    r = _post(_app(), b'{"title": "x"}', **{"idempotency-key": '"quoted-key"'})
    assert r.status_code == 202
    assert r.json()["key"] == "quoted-key" and r.json()["title"] == "x"
    assert len(fastapi_solves) == 1  # the first create only, which the router routed


def test_a_check_added_to_the_create_route_applies_to_every_create(fastapi_solves):
    # a valid create, which the fast path would serve if the route had no other input
    r = _post(_app(_refuse), b'{"title": "x"}')
    assert r.status_code == 418
    assert len(fastapi_solves) == 2


def test_the_fast_path_refuses_to_sit_outside_another_middleware():
    app = FastAPI()
    app.add_middleware(_Passthrough)  # added first: innermost, between the fast path and routing
    app.add_middleware(FastCreate)
    with pytest.raises(RuntimeError, match="innermost middleware"):
        _post(app, b'{"title": "x"}')


class _Passthrough:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


@pytest.mark.parametrize("body,extra", [(b'{"title": "x", "colour": "red"}', {}),
                                        (b'{"title": "x"}', {"x-tenant-id": "not-a-uuid"}),
                                        (b'{"title": "x"}', {"content-type": "text/plain"})])
def test_the_fast_path_hands_what_it_declines_to_the_route_unchanged(fastapi_solves, body, extra):
    r = _post(_app(), body, **extra)
    assert r.status_code in (400, 422) and r.headers["content-type"] == "application/problem+json"
    assert len(fastapi_solves) == 2
