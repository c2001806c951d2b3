"""OIDC against a real OpenID Provider (devstack/oidc: the OpenID-Certified `oidc-provider`),
with the API in its own process: key rotation without a restart, a removed key refused after
the refresh interval, the provider down (cached keys work, an unknown key is 503 with
Retry-After), tenant isolation with provider-issued tokens, and verification that never makes
the event loop wait on the network."""
from __future__ import annotations

import socket
import threading
import time
import uuid

import httpx
import pytest

from aether_platform.auth import AuthError, Principal, StreamTickets
from devstack.oidc import OidcProvider
from tests.api.conftest import new_key
from tests.conftest import ApiServer
from tests.security.test_auth import auth
from tests.stream.conftest import EventProducer, mine, wait_until
from tests.stream.sse_client import SseClient

AUDIENCE = "https://api.aether.test"
OTHER_AUDIENCE = "https://other.test"
JOB = {"title": "provider job", "status": "Open"}


class Clients:
    def __init__(self):
        self.tenant_a, self.tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
        self.secrets = {name: uuid.uuid4().hex for name in ("client-a", "client-b", "ops")}

    def config(self) -> list[dict]:
        return [{"client_id": "client-a", "client_secret": self.secrets["client-a"], "tenant_id": self.tenant_a},
                {"client_id": "client-b", "client_secret": self.secrets["client-b"], "tenant_id": self.tenant_b},
                {"client_id": "ops", "client_secret": self.secrets["ops"], "role": "operator"}]


def start_provider(clients: Clients, state_dir) -> OidcProvider:
    provider = OidcProvider(clients.config(), audience=AUDIENCE, other_audiences=(OTHER_AUDIENCE,))
    provider.start(state_dir)
    return provider


def oidc_env(platform_env: dict, provider: OidcProvider, **extra: str) -> dict[str, str]:
    # No JWKS URL: the API discovers it from the issuer's openid-configuration.
    return {**platform_env, "AETHER_AUTH": "on", "AETHER_AUTH_OIDC_ISSUER": provider.issuer,
            "AETHER_AUTH_OIDC_AUDIENCE": AUDIENCE, "AETHER_WRITE_RATE_PER_TENANT": "0", **extra}


def token(provider: OidcProvider, clients: Clients, name: str) -> str:
    return provider.token(name, clients.secrets[name])


@pytest.fixture(scope="module")
def clients() -> Clients:
    return Clients()


@pytest.fixture(scope="module")
def provider(clients, tmp_path_factory):
    p = start_provider(clients, tmp_path_factory.mktemp("oidc"))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def provider_api(platform_env, provider, tmp_path_factory):
    """Keys re-read every 2 s; no cooldown, so that a rotated key is fetched on first sight."""
    env = oidc_env(platform_env, provider, AETHER_AUTH_OIDC_JWKS_REFRESH_SECONDS="2",
                   AETHER_AUTH_OIDC_JWKS_COOLDOWN_SECONDS="0")
    server = ApiServer(env, tmp_path_factory.mktemp("oidc-api")).start()
    yield server
    server.stop()


def status(api: ApiServer, tok: str, tenant: str) -> int:
    return httpx.get(f"{api.url}/api/crm/jobs", headers=auth(tok, tenant), timeout=30).status_code


def test_provider_tokens_carry_the_tenant_and_the_operator_role(provider_api, provider, clients):
    a = token(provider, clients, "client-a")
    assert status(provider_api, a, clients.tenant_a) == 200
    assert status(provider_api, a, clients.tenant_b) == 403
    ops = token(provider, clients, "ops")
    assert status(provider_api, ops, clients.tenant_a) == 403
    assert httpx.get(f"{provider_api.url}/metrics", headers=auth(ops), timeout=30).status_code == 200
    assert httpx.get(f"{provider_api.url}/metrics", headers=auth(a), timeout=30).status_code == 403
    # a token for another audience is refused
    other = provider.token("client-a", clients.secrets["client-a"], audience=OTHER_AUDIENCE)
    assert status(provider_api, other, clients.tenant_a) == 401


def test_rotation_is_accepted_and_a_removed_key_refused_without_a_restart(provider_api, provider, clients):
    pid = provider_api.proc.pid
    old = token(provider, clients, "client-a")
    assert status(provider_api, old, clients.tenant_a) == 200

    provider.rotate(keep_old=True)
    rotated = token(provider, clients, "client-a")
    assert status(provider_api, rotated, clients.tenant_a) == 200  # a new kid: fetched on first sight
    assert status(provider_api, old, clients.tenant_a) == 200      # the old key is still published

    provider.rotate(keep_old=False)
    newest = token(provider, clients, "client-a")
    assert status(provider_api, newest, clients.tenant_a) == 200
    # The old keys are gone at the provider: refused once the API's 2 s refresh has run.
    wait_until(lambda: status(provider_api, old, clients.tenant_a) == 401, timeout=30, what="old key refused")
    assert status(provider_api, rotated, clients.tenant_a) == 401
    assert status(provider_api, newest, clients.tenant_a) == 200
    assert provider_api.proc.pid == pid


def test_provider_tenant_token_cannot_touch_another_tenant(provider_api, provider, clients, db, kafka_bootstrap,
                                                           topic):
    a, b = token(provider, clients, "client-a"), token(provider, clients, "client-b")
    with httpx.Client(base_url=provider_api.url, timeout=30) as c:
        created = c.post("/api/crm/jobs", json=JOB, headers=auth(b, clients.tenant_b, new_key()))
        assert created.status_code == 202, created.text
        job = created.json()["id"]
        before = db.execute("SELECT * FROM jobs WHERE tenant_id = %s ORDER BY id", (clients.tenant_b,)).fetchall()
        # A's token with B's header: 403; with its own header B's row does not exist.
        assert c.get("/api/crm/jobs", headers=auth(a, clients.tenant_b)).status_code == 403
        assert c.post("/api/crm/jobs", json=JOB, headers=auth(a, clients.tenant_b, new_key())).status_code == 403
        assert c.get(f"/api/crm/jobs/{job}", headers=auth(a, clients.tenant_a)).status_code == 404
        assert c.patch(f"/api/crm/jobs/{job}", json={"status": "Cancelled"},
                       headers=auth(a, clients.tenant_a, new_key())).status_code == 404
        assert c.delete(f"/api/crm/jobs/{job}", headers=auth(a, clients.tenant_a, new_key())).status_code == 404
        assert job not in {i["id"] for i in c.get("/api/crm/jobs", headers=auth(a, clients.tenant_a)).json()["items"]}
    assert db.execute("SELECT * FROM jobs WHERE tenant_id = %s ORDER BY id", (clients.tenant_b,)).fetchall() == before

    # The stream: A's token asking for B's events sees only A's.
    producer = EventProducer(kafka_bootstrap, topic)
    since_ms = int(time.time() * 1000) - 60_000
    with SseClient(f"{provider_api.url}/crm-events?tenant={clients.tenant_b}&since={since_ms}",
                   headers={"Authorization": f"Bearer {a}"}) as client:
        client.wait(lambda s: s.status is not None, what="response")
        assert client.status == 200
        sent_a = [producer.job(clients.tenant_a, title=f"a{i}") for i in range(3)]
        sent_b = [producer.job(clients.tenant_b, title=f"b{i}") for i in range(3)]
        producer.flush()
        client.wait(lambda s: len(mine(s, clients.tenant_a)) >= len(sent_a), what="tenant A events")
        assert {(e["value"] or {}).get("TenantId") for e in client.events()} == {clients.tenant_a}
        assert sent_b


def test_provider_down_cached_keys_work_and_an_unknown_key_is_503(platform_env, clients, tmp_path):
    provider = start_provider(clients, tmp_path / "oidc")
    # A refresh interval longer than the test: the API learns keys only when it meets them.
    env = oidc_env(platform_env, provider, AETHER_AUTH_OIDC_JWKS_REFRESH_SECONDS="3600",
                   AETHER_AUTH_OIDC_JWKS_COOLDOWN_SECONDS="0")
    api = ApiServer(env, tmp_path).start()
    try:
        known = token(provider, clients, "client-a")
        assert status(api, known, clients.tenant_a) == 200
        provider.rotate(keep_old=True)
        unseen = token(provider, clients, "client-a")  # signed by a key the API has not fetched
        provider.stop()

        assert status(api, known, clients.tenant_a) == 200
        r = httpx.get(f"{api.url}/api/crm/jobs", headers=auth(unseen, clients.tenant_a), timeout=30)
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["status"] == 503
        # a token that is not even a JWT of ours is still a plain 401
        assert status(api, "x.y.z", clients.tenant_a) == 401
        log = api.log_path.read_text()
        assert unseen not in log and known not in log
        assert "Traceback" not in log
    finally:
        api.stop()
        provider.stop()


def test_a_hanging_jwks_endpoint_never_stalls_other_requests(platform_env, clients, tmp_path):
    """The key fetch runs off the event loop: while it hangs, other requests are served."""
    provider = start_provider(clients, tmp_path / "oidc")
    tok = token(provider, clients, "client-a")
    provider.stop()
    hang = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    env = oidc_env(platform_env, provider, AETHER_AUTH_OIDC_JWKS_URL=f"http://127.0.0.1:{hang.getsockname()[1]}/jwks")
    api = ApiServer(env, tmp_path).start()
    try:
        result = {}

        def slow():
            result["status"] = status(api, tok, clients.tenant_a)
            result["done_at"] = time.monotonic()

        waiter = threading.Thread(target=slow)
        waiter.start()
        # The JWT request is now waiting on the JWKS fetch (up to its 5 s timeout); the loop is free.
        time.sleep(0.5)
        served = [httpx.get(f"{api.url}/openapi.json", timeout=30).status_code for _ in range(5)]
        served_at = time.monotonic()
        waiter.join(timeout=30)
        assert served == [200] * 5
        assert result["status"] == 503
        assert served_at < result["done_at"]
    finally:
        api.stop()
        hang.close()


def test_stream_tickets_expire_and_cannot_be_forged():
    tickets = StreamTickets("secret", ttl_seconds=60)
    tenant = uuid.uuid4()
    t = tickets.issue(Principal("client-a", tenant), now=1000)
    assert tickets.verify(t, now=1059) == Principal("client-a", tenant)
    with pytest.raises(AuthError):
        tickets.verify(t, now=1060)
    with pytest.raises(AuthError):
        StreamTickets("another secret").verify(t, now=1000)
    body, _, sig = t.rpartition(".")
    forged = body.replace(str(tenant), "operator")
    with pytest.raises(AuthError):
        tickets.verify(f"{forged}.{sig}", now=1000)
    assert tickets.verify(tickets.issue(Principal("ops", None, operator=True), now=1000), now=1000).operator
