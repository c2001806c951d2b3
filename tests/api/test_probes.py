"""Probes: /livez answers while the process serves, /readyz turns 503 only for the database or a
stopped stream consumer, and Kafka being away is reported without being fatal. Against real
servers; an unreachable one is a port held bound but never listening, so nothing else can take it."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys

import httpx

from tests.conftest import REPO, ApiServer

READY = {"status": "ready", "database": "ok", "kafka": "ok", "stream_consumer": "running"}


@contextlib.contextmanager
def closed_port():
    """A local port on which connections are refused, for as long as the block runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listen(): a connect gets RST
        yield s.getsockname()[1]


def test_probes_when_everything_is_up(client):
    live = client.get("/livez")
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == READY
    assert client.get("/").json()["status"] == "ok"


def test_probes_are_documented(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert "200" in paths["/livez"]["get"]["responses"]


def test_kafka_unreachable_is_reported_but_ready(platform_env, tmp_path):
    with closed_port() as port:
        server = ApiServer({**platform_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}, tmp_path).start()
        try:
            assert httpx.get(server.url + "/livez", timeout=10).status_code == 200
            r = httpx.get(server.url + "/readyz", timeout=10)
            assert r.status_code == 200, r.text
            assert r.json() == {**READY, "kafka": "unreachable"}
            # The seed's health JSON is unchanged: degraded without Kafka.
            assert httpx.get(server.url + "/", timeout=10).status_code == 503
        finally:
            server.stop()


def test_database_unreachable_is_not_ready(platform_env, tmp_path):
    with closed_port() as port:
        server = ApiServer({**platform_env, "DATABASE_URL": f"postgresql://aether@127.0.0.1:{port}/crm"},
                           tmp_path).start()
        try:
            assert httpx.get(server.url + "/livez", timeout=10).status_code == 200
            r = httpx.get(server.url + "/readyz", timeout=10)
            assert r.status_code == 503
            assert r.json() == {**READY, "status": "not_ready", "database": "unreachable"}
        finally:
            server.stop()


# Runs in a process of its own: the app is served in-process there (its real stream hub, stopped
# for real while the app serves); in pytest's process `api` would be tests/api.
_STOP_THE_CONSUMER = """
import asyncio, json, time
import httpx
from api.main import create_app

async def main():
    app = create_app()
    out = {}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            deadline = time.monotonic() + 30
            while (r := await c.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            out["before"] = [r.status_code, r.json()]
            await app.state.stream_hub.stop()
            r = await c.get("/readyz")
            out["after"] = [r.status_code, r.json()]
            out["livez_after"] = (await c.get("/livez")).status_code
    print(json.dumps(out))

asyncio.run(main())
"""


def test_stopped_stream_consumer_is_not_ready(platform_env):
    r = subprocess.run([sys.executable, "-c", _STOP_THE_CONSUMER], cwd=REPO, env={**os.environ, **platform_env},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["before"] == [200, READY]
    assert out["after"] == [503, {**READY, "status": "not_ready", "stream_consumer": "stopped"}]
    assert out["livez_after"] == 200
