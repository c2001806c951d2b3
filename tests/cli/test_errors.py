"""Common mistakes give ONE clear line on stderr and a non-zero exit, never a traceback (unless
--debug), and destructive commands refuse to run without an explicit target or --yes.

"Down" servers are loopback port 1, where nothing listens: connections are refused at once."""
from __future__ import annotations

import psycopg
import pytest

from api.cli import explain
from aether_platform.db_url import libpq_url
from tests.cli.test_cli import _dead_lettered_event, _state, aether
from tests.conftest import REPO

DB_DOWN = {"DATABASE_URL": "postgresql://aether@127.0.0.1:1/crm"}
KAFKA_DOWN = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}


def one_line(r) -> str:
    """The failure's stderr: exactly one non-empty line, and no traceback."""
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_migrate_up_with_the_database_down():
    line = one_line(aether("migrate", "up", env=DB_DOWN))
    assert line.startswith("aether migrate: cannot use PostgreSQL at postgresql://aether@127.0.0.1:1/crm")
    assert "Connection refused" in line and "make up" in line


def test_debug_shows_the_traceback():
    r = aether("--debug", "migrate", "up", env=DB_DOWN)
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "OperationalError" in r.stderr


def test_outbox_requeue_all_with_the_database_down():
    line = one_line(aether("outbox", "requeue", "--all", "--yes", env=DB_DOWN))
    assert "cannot use PostgreSQL" in line and "make up" in line


def test_topic_check_with_kafka_down():
    line = one_line(aether("topic", "check", "--timeout", "2", env=KAFKA_DOWN))
    assert line.startswith("aether topic: cannot use Kafka at 127.0.0.1:1") and "make up" in line


@pytest.mark.parametrize("args", [("auth", "hash-token", "not-a-uuid"),
                                  ("outbox", "requeue", "--event-id", "not-a-uuid")], ids=" ".join)
def test_a_malformed_uuid_is_a_usage_error(args):
    r = aether(*args)
    line = one_line(r)
    assert r.returncode == 2
    assert "'not-a-uuid' is not a UUID" in line and "--help" in line


def test_an_invalid_setting_names_the_variable():
    line = one_line(aether("topic", "check", env={"AETHER_TOPIC_PARTITIONS": "three"}))
    assert "invalid setting (AETHER_TOPIC_PARTITIONS" in line and "docs/settings.md" in line


def test_dashboards_push_to_a_grafana_that_is_down():
    line = one_line(aether("dashboards", "push", "--url", "http://127.0.0.1:1", "--token", "t"))
    assert "cannot reach Grafana" in line and "refused" in line.lower()


def test_missing_file_and_unknown_failures_are_one_line():
    assert explain(FileNotFoundError(2, "No such file or directory", "tokens.txt")) == "no such file: tokens.txt"
    assert explain(RuntimeError("boom")) is None  # main() adds the type and points to --debug


def test_migrate_down_needs_a_target(database_url):
    line = one_line(aether("migrate", "down", env={"DATABASE_URL": database_url}))
    assert "--revision" in line and "--yes" in line
    with psycopg.connect(libpq_url(database_url)) as conn:
        assert conn.execute("SELECT to_regclass('outbox_events')").fetchone()[0] is not None


def test_requeue_all_needs_yes(db, database_url):
    event_id = _dead_lettered_event(db)
    line = one_line(aether("outbox", "requeue", "--all", env={"DATABASE_URL": database_url}))
    assert "--yes" in line
    assert _state(db, event_id) == (True, 5)


def test_an_unknown_benchmark_is_refused_before_anything_runs():
    before = (REPO / "BENCHMARKS.md").read_text()
    line = one_line(aether("bench", "no_such_benchmark"))
    assert "no benchmark named no_such_benchmark" in line and "--list" in line
    assert (REPO / "BENCHMARKS.md").read_text() == before
