"""Every `aether` command, run as a user runs it: a subprocess of `python -m api.cli`."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import psycopg
import pytest

from aether_platform import outbox
from api.cli import build_parser
from aether_platform.db_url import libpq_url
from tests.conftest import CLI, REPO, RUN_ID, create_database, drop_database


def aether(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def json_lines(stderr: str) -> list[dict]:
    """Every stderr line must be a JSON object; returns them."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


def test_top_level_help_lists_every_command():
    r = aether("--help")
    assert r.returncode == 0, r.stderr
    for name in ("stack", "migrate", "topic", "dashboards", "bench", "outbox"):
        assert name in r.stdout


@pytest.mark.parametrize("command", list(_commands(build_parser())), ids=" ".join)
def test_every_command_has_help(command):
    # In-process: one subprocess per command would cost a second of imports each.
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert out.getvalue().startswith("usage: aether")


def test_stack_status_and_env():
    r = aether("stack", "status")
    assert r.returncode == 0, r.stderr
    assert "postgres" in r.stdout and "kafka" in r.stdout
    r = aether("stack", "env")
    assert r.returncode == 0, r.stderr
    assert "export DATABASE_URL=" in r.stdout and "export KAFKA_BOOTSTRAP_SERVERS=" in r.stdout


def _dead_lettered_event(conn: psycopg.Connection) -> uuid.UUID:
    """A dead-lettered row inserted in one transaction, so no relay can claim it first."""
    event = outbox.make_event("JobCreated", "job", uuid.uuid4(), uuid.uuid4(), {"Title": "cli", "Status": "Open"})
    with conn.transaction(), conn.cursor() as cur:
        outbox.write(cur, event)
        cur.execute("UPDATE outbox_events SET dead_lettered_at = now(), retry_count = 5 WHERE event_id = %s",
                    (event.event_id,))
    return event.event_id


def _state(conn: psycopg.Connection, event_id: uuid.UUID) -> tuple:
    return conn.execute("SELECT dead_lettered_at IS NOT NULL, retry_count FROM outbox_events WHERE event_id = %s",
                        (event_id,)).fetchone()


def test_outbox_requeue_one_event_with_json_logs(db, database_url):
    event_id = _dead_lettered_event(db)
    r = aether("--log-format", "json", "outbox", "requeue", "--event-id", str(event_id),
               env={"DATABASE_URL": database_url})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "requeued 1"
    lines = json_lines(r.stderr)
    assert any(line["message"] == "requeued 1 dead-lettered event(s)" and line["level"] == "info" for line in lines)
    assert _state(db, event_id) == (False, 0)


def test_migrate_up_requeue_all_and_down_in_a_scratch_database(base_database_url):
    name = f"aether_cli_{RUN_ID}"
    url = create_database(base_database_url, name)
    env = {"DATABASE_URL": url}
    try:
        r = aether("--log-format", "json", "migrate", "up", env=env)
        assert r.returncode == 0, r.stderr
        assert any("Running upgrade" in line["message"] for line in json_lines(r.stderr))

        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            ids = [_dead_lettered_event(conn) for _ in range(2)]
            r = aether("outbox", "requeue", "--all", "--yes", env=env)
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == "requeued 2"
            assert [_state(conn, i) for i in ids] == [(False, 0), (False, 0)]

        r = aether("migrate", "down", "--yes", env=env)
        assert r.returncode == 0, r.stderr
        with psycopg.connect(libpq_url(url)) as conn:
            assert conn.execute("SELECT to_regclass('outbox_events')").fetchone()[0] is None
    finally:
        drop_database(base_database_url, name)


def test_topic_provision_then_check(kafka_bootstrap):
    from confluent_kafka.admin import AdminClient

    name = f"aetherlink.events.cli-{RUN_ID}"
    env = {"AETHER_TOPIC": name, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    try:
        r = aether("topic", "provision", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith(f"{name}: created, 3 partitions")
        r = aether("topic", "check", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "drift" not in r.stdout
    finally:
        AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics([name])


def test_bench_lists_the_benchmarks():
    r = aether("bench", "--list")
    assert r.returncode == 0, r.stderr
    assert "api_write" in r.stdout.split()
    assert "report" not in r.stdout.split()


class _FakeGrafana(BaseHTTPRequestHandler):
    received: list[tuple[str, dict, str]] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((self.path, body, self.headers.get("Authorization", "")))
        answer = json.dumps({"status": "success", "uid": body["dashboard"]["uid"], "url": "/d/x"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def test_dashboards_check_and_push():
    r = aether("dashboards", "check")
    assert r.returncode == 0, r.stderr

    server = HTTPServer(("127.0.0.1", 0), _FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = aether("dashboards", "push", "--url", f"http://127.0.0.1:{server.server_port}", "--token", "t0k")
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr
    path, body, auth = _FakeGrafana.received[-1]
    assert path == "/api/dashboards/db" and auth == "Bearer t0k"
    assert "SLO" in body["dashboard"]["title"]


@pytest.mark.parametrize("args, says", [
    (("stack", "env", "--services", "kafka"), "takes no services"),
    (("stack", "status", "--foreground"), "--foreground applies only to `up`"),
    (("stack", "down", "--foreground"), "--foreground applies only to `up`"),
    (("stack", "restart"), "name what to restart"),
    (("stack", "restart", "kafka", "--services", "postgres"), "not both"),
    (("stack", "down", "--services", "kafak"), "unknown service(s): kafak"),
    (("bench", "--list", "api_write"), "takes no names"),
    (("dashboards", "check", "--url", "http://grafana.invalid"), "--url only apply to push"),
    (("dashboards", "push", "--check"), "--check cannot be combined with push"),
])
def test_an_option_the_command_cannot_honour_is_refused(args, says, tmp_path):
    """Never silently ignored: one line naming the problem, non-zero exit, nothing started or stopped."""
    r = aether(*args, env={"AETHER_STACK_DIR": str(tmp_path / "never-used")})
    assert r.returncode != 0
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "never-used").exists()
