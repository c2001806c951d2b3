"""The production profile on this machine: Kafka only over SASL_SSL with credentials, PostgreSQL
only over verified TLS through both drivers, a job from a token holder through outbox, Kafka and
/crm-events, and probes that tell a Kafka outage (ready, reported) from a database outage (not
ready). The stack is started once for the session (tests/production/conftest.py); the test that
stops servers runs last and starts them again."""
from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import uuid

import asyncpg
import httpx
import psycopg
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from aether_platform.db_url import libpq_url
from api.db import asyncpg_dsn
from tests.conftest import CLI, REPO
from tests.stream.sse_client import SseClient


def _quiet() -> logging.Logger:
    # librdkafka logs every refused connection; the assertions below say what matters.
    logger = logging.getLogger("tests.production.kafka")
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return logger


def _metadata(conf: dict, timeout: float = 8):
    return AdminClient({**conf, "logger": _quiet()}).list_topics(timeout=timeout)


def test_kafka_serves_only_clients_with_sasl_credentials(production_stack):
    conf = production_stack.kafka
    assert (conf["security.protocol"], conf["sasl.mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert "aetherlink.events" in _metadata(conf).topics

    tls_only = {k: v for k, v in conf.items() if not k.startswith("sasl.")} | {"security.protocol": "SSL"}
    wrong_password = {**conf, "sasl.password": "not-the-password"}
    plaintext = {"bootstrap.servers": conf["bootstrap.servers"]}
    for refused in (tls_only, wrong_password, plaintext):
        with pytest.raises(KafkaException):
            _metadata(refused, timeout=3)


def test_cli_topic_commands_use_the_same_kafka_settings(production_stack):
    r = production_stack.cli("topic", "check", platform_env=True)
    assert "drift" not in r.stdout
    broken = {**production_stack.env_for_cli, **production_stack.env, "KAFKA_SASL_PASSWORD_FILE": "/nonexistent"}
    r = subprocess.run([*CLI, "topic", "check"], cwd=REPO, env=broken, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith("KAFKA_SASL_PASSWORD_FILE=/nonexistent: cannot read it "
                                                      "(No such file or directory)")


def _other_ca(tmp_path) -> str:
    """A CA that signed nothing the servers present."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k"),
                    "-out", str(tmp_path / "other-ca.crt"), "-days", "2", "-subj", "/CN=Someone else's CA"],
                   check=True, capture_output=True)
    return str(tmp_path / "other-ca.crt")


def test_postgres_over_verified_tls_through_psycopg_and_asyncpg(production_stack, tmp_path):
    url = production_stack.database_url
    assert "sslmode=verify-full" in url and f"sslrootcert={production_stack.ca_file}" in url
    ssl_query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"

    with psycopg.connect(libpq_url(url), connect_timeout=5) as conn:
        assert conn.execute(ssl_query).fetchone() == (True,)

    async def through_asyncpg(dsn: str):
        conn = await asyncpg.connect(asyncpg_dsn(dsn), timeout=5)
        try:
            return await conn.fetchval(ssl_query)
        finally:
            await conn.close()

    assert asyncio.run(through_asyncpg(url)) is True

    wrong_ca = url.replace(str(production_stack.ca_file), _other_ca(tmp_path))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(libpq_url(wrong_ca), connect_timeout=5)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(through_asyncpg(wrong_ca))
    # Without TLS the server refuses the connection itself.
    plain = url.split("?")[0] + "?sslmode=disable"
    with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects"):
        psycopg.connect(plain, connect_timeout=5)


def test_job_created_with_a_token_reaches_crm_events_over_sasl_ssl(production_stack):
    api = production_stack.api_url
    tenant = str(uuid.uuid4())
    token = production_stack.add_token(tenant)
    auth = {"Authorization": f"Bearer {token}"}

    anonymous = httpx.post(f"{api}/api/crm/jobs", json={"accountId": None, "title": "x", "status": "Open"},
                           headers={"X-Tenant-Id": tenant, "Idempotency-Key": "anon"}, timeout=10)
    assert anonymous.status_code == 401

    with SseClient(f"{api}/crm-events", headers=auth) as sse:
        sse.wait(lambda c: c.status == 200 and c.last_id() is not None, what="the stream's first id")
        title = f"Production job {uuid.uuid4().hex[:6]}"
        created = httpx.post(f"{api}/api/crm/jobs", json={"accountId": None, "title": title, "status": "Open"},
                             headers={**auth, "X-Tenant-Id": tenant, "Idempotency-Key": f"k-{uuid.uuid4()}"},
                             timeout=10)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        frame = sse.wait(lambda c: next((f for f in c.frames if f.data and f.json.get("key") == job_id), None),
                         what="the job's event on /crm-events", timeout=60)
    assert frame.json["value"]["Type"] == "JobCreated"
    assert frame.json["value"]["Title"] == title

    # It went through the outbox and the relay (Dagster, over SASL_SSL), not around them. The relay
    # commits published_at after the broker's ack, so it may trail the record on the stream.
    with psycopg.connect(libpq_url(production_stack.database_url), autocommit=True) as db:
        deadline = time.monotonic() + 30
        while (row := db.execute("SELECT published_at, kafka_offset FROM outbox_events WHERE aggregate_key = %s",
                                 (job_id,)).fetchone())[0] is None:
            assert time.monotonic() < deadline, "the relay never marked the event published"
            time.sleep(0.1)
    assert row[1] == frame.json["offset"]


def _poll(url: str, until, what: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=5)
            assert last.status_code != 404, f"{url} does not exist"
            if until(last):
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f}s; last answer: {getattr(last, 'text', last)}")


def test_probes_while_kafka_then_postgres_are_stopped(production_stack):
    """Runs last in this module: it stops and restarts the profile's servers."""
    api = production_stack.api_url
    healthy = {"status": "ready", "database": "ok", "kafka": "ok", "stream_consumer": "running"}

    def ready(r: httpx.Response) -> bool:
        return r.status_code == 200 and {k: r.json().get(k) for k in healthy} == healthy

    _poll(f"{api}/readyz", ready, "ready with every server up")

    production_stack.stop_service("kafka")
    try:
        during = _poll(f"{api}/readyz", lambda r: r.json().get("kafka") == "unreachable", "kafka reported down")
        assert during.status_code == 200
        assert during.json()["status"] == "ready" and during.json()["database"] == "ok"
        livez = httpx.get(f"{api}/livez", timeout=5)
        assert (livez.status_code, livez.json()) == (200, {"status": "alive"})
    finally:
        production_stack.start_service("kafka")
    _poll(f"{api}/readyz", ready, "ready again after Kafka came back")

    production_stack.stop_service("postgres")
    try:
        during = _poll(f"{api}/readyz", lambda r: r.status_code == 503, "not ready without the database")
        assert during.json()["status"] == "not_ready" and during.json()["database"] == "unreachable"
        assert httpx.get(f"{api}/livez", timeout=5).status_code == 200
    finally:
        production_stack.start_service("postgres")
    _poll(f"{api}/readyz", ready, "ready again after PostgreSQL came back")
