"""The README's `eval "$(make -s env)"` line, then `make down`, `make up` and `make status`, in an
isolated stack: the exported client variables must never make the stack treat its own servers as
external ones (it did: `down` left PostgreSQL running and the next `up` waited for an "external" Kafka)."""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import REPO
from tests.foundation.test_stack import _isolated_env, _processes_mentioning, aether, state_dir  # noqa: F401

pytestmark = pytest.mark.slow


def make(env: dict[str, str], script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -e\n{script}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_exported_client_variables_never_switch_the_stack(monkeypatch):
    """What `make env` printed for one stack, still in the shell when another is configured
    (another port): the stack uses its own servers, and only the explicit switches change that."""
    from devstack import stack

    for name, value in {"DATABASE_URL": "postgresql://aether@127.0.0.1:55432/crm",
                        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                        "DAGSTER_PG_URL": "postgresql+psycopg2://aether@127.0.0.1:55432/dagster",
                        "AETHER_PG_PORT": "56000", "AETHER_KAFKA_PORT": "9500"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AETHER_EXTERNAL_DATABASE_URL", raising=False)
    monkeypatch.delenv("AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    cfg = stack.Config()
    assert cfg.external_database_url is None and cfg.external_kafka is None
    assert cfg.database_url == "postgresql://aether@127.0.0.1:56000/crm"
    assert cfg.kafka_bootstrap == "127.0.0.1:9500"
    assert cfg.dagster_pg_url == "postgresql+psycopg2://aether@127.0.0.1:56000/dagster"
    assert not any(v.startswith("external") for v in stack.status(cfg).values())

    monkeypatch.setenv("AETHER_EXTERNAL_DATABASE_URL", "postgresql://app@db.internal:5432/crm")
    monkeypatch.setenv("AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS", "broker1:9092")
    cfg = stack.Config()
    assert cfg.database_url == "postgresql://app@db.internal:5432/crm" and cfg.kafka_bootstrap == "broker1:9092"
    assert cfg.dagster_pg_url == "postgresql+psycopg2://aether@127.0.0.1:55432/dagster"  # the override, beside it


def test_make_env_prints_only_exports(state_dir):  # noqa: F811 - the fixture imported above
    env = _isolated_env(state_dir)
    r = make(env, "make -s env")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.startswith("export ") for line in lines), r.stdout
    assert "[bootstrap] ready" in r.stderr


def test_eval_make_env_then_down_up_status(state_dir):  # noqa: F811
    env = {**_isolated_env(state_dir), "AETHER_STACK_SERVICES": "infra"}
    try:
        first = aether(env, "stack", "up")
        assert first.returncode == 0, first.stdout + first.stderr

        # The README's line, then the commands a user runs next, in that same shell.
        r = make(env, 'eval "$(make -s env)"\n'
                      'test -n "$DATABASE_URL" && test -n "$KAFKA_BOOTSTRAP_SERVERS"\n'
                      'make -s down\n'
                      'echo "--- after down"\n'
                      'make -s status\n'
                      'echo "--- up"\n'
                      'make -s up\n'
                      'echo "--- status"\n'
                      'make -s status\n')
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        down, after_down, up, status = _sections(r.stdout, "--- after down", "--- up", "--- status")
        assert "external" not in r.stdout, out
        # `down` stopped the stack's own PostgreSQL and Kafka; `up` started them again.
        assert "postgres: stopping" in down and "kafka: stopping" in down, out
        assert "postgres: starting" in up and "kafka: starting broker" in up, out
        for name in ("postgres", "kafka", "prometheus"):
            assert "stopped" in _line(after_down, name), out
            assert "running" in _line(status, name), out
    finally:
        aether(env, "stack", "down")
    time.sleep(0.5)
    assert _processes_mentioning(str(state_dir)) == []


def _sections(text: str, *markers: str) -> list[str]:
    parts = []
    for marker in markers:
        head, text = text.split(marker, 1)
        parts.append(head)
    return [*parts, text]


def _line(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(name))
