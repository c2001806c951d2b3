"""The stack launcher's progress lines follow the log format: with --log-format json, every line
it writes on stderr is a JSON log record (logger aether.stack), and stdout keeps only the
command's own output. A throwaway PostgreSQL in a directory and on a port of its own."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

from tests.conftest import CLI, REPO


def test_stack_up_and_down_log_json_lines():
    state = REPO / ".stack" / "test-stacks" / uuid.uuid4().hex[:8]
    state.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env.update({"AETHER_STACK_DIR": str(state), "AETHER_PG_PORT": "0"})  # the stack picks, as own_postgres does

    def aether(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "--log-format", "json", "stack", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180)

    try:
        up = aether("up", "--services", "postgres")
        assert up.returncode == 0, up.stdout + up.stderr
    finally:
        down = aether("down")
        shutil.rmtree(state, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    for r in (up, down):
        lines = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
        assert lines, r.stderr
        assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        assert any(line["logger"] == "aether.stack" and "postgres" in line["message"] for line in lines)
        assert "[stack]" not in r.stdout
