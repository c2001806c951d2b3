"""`python -m dashboards_py push` against a stand-in Grafana that checks the documented request:
POST /api/dashboards/db, Bearer auth, JSON {"dashboard": {... "id": null, "uid"}, "overwrite": true,
"folderUid"}."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dashboards_py import dashboard
from tests.conftest import REPO


class FakeGrafana(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ok = (self.path == "/api/dashboards/db" and self.headers["Authorization"] == "Bearer s3cret"
              and self.headers["Content-Type"] == "application/json"
              and body.get("overwrite") is True and body["dashboard"].get("id") is None
              and body["dashboard"].get("uid") == dashboard.UID and "SLO" in body["dashboard"]["title"])
        FakeGrafana.received.append({"path": self.path, "body": body, "headers": dict(self.headers)})
        code, answer = (200, {"status": "success", "uid": dashboard.UID, "url": "/d/aether-slos", "version": 1}) \
            if ok else (412, {"message": "bad request shape"})
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(answer).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def grafana():
    FakeGrafana.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _push(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dashboards_py", "push", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_push_sends_the_documented_request(grafana):
    r = _push("--url", grafana, "--token", "s3cret", "--folder-uid", "aether")
    assert r.returncode == 0, r.stderr
    assert "success" in r.stdout
    (req,) = FakeGrafana.received
    assert req["body"]["folderUid"] == "aether"
    assert req["body"]["dashboard"]["panels"]


def test_push_reports_a_refusal(grafana):
    r = _push("--url", grafana, "--token", "wrong")
    assert r.returncode == 1 and "412" in r.stderr


def test_push_reports_an_unreachable_grafana():
    r = _push("--url", "http://127.0.0.1:9")
    assert r.returncode == 1 and "cannot reach" in r.stderr
