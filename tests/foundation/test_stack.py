"""The stack command against real servers, in an isolated state directory on its own ports so
that the developer's (and this suite's) stack is never touched."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import BASE_ENV, CLI, REPO, refused_port, stack_exports

pytestmark = pytest.mark.slow


def _isolated_env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "AETHER_TOPIC",
                                                             "AETHER_EXTERNAL_DATABASE_URL",
                                                             "AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS")}
    # Every port 0: the stack picks its own, race-free (devstack/stack.py), and `stack env` says which.
    env["AETHER_STACK_DIR"] = str(state_dir)
    for var in ("AETHER_PG_PORT", "AETHER_KAFKA_PORT", "AETHER_KAFKA_CONTROLLER_PORT", "AETHER_PROMETHEUS_PORT",
                "AETHER_API_PORT", "AETHER_DAGSTER_PORT"):
        env[var] = "0"
    return env


def aether(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _processes_mentioning(*markers: str) -> list[str]:
    """Live processes whose command line or environment names a marker (the stack passes its
    AETHER_STACK_DIR to every piece it starts), the test's own excepted."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (cmdline.parent / "environ").read_bytes().decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if any(m in text or m in environ for m in markers) and state != "Z" and "pytest" not in text:
            out.append(text)
    return out


@pytest.fixture
def state_dir():
    # Under the checkout, not /tmp/pytest-of-root: the postgres user must be able to reach it.
    d = REPO / ".stack" / "test-stacks" / uuid.uuid4().hex[:8]
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_up_twice_then_down_leaves_nothing(state_dir):
    env = _isolated_env(state_dir)
    first = aether(env, "stack", "up", "--services", "infra")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "postgres: ready" in first.stdout and "kafka: ready" in first.stdout and "prometheus: ready" in first.stdout

    exports = stack_exports(env)
    ports = json.loads((state_dir / "ports.json").read_text())
    assert len({ports[a] for a in ("pg_port", "kafka_port", "kafka_controller_port", "prometheus_port")}) == 4, ports
    assert exports["DATABASE_URL"].endswith(f":{ports['pg_port']}/crm")
    assert exports["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{ports['kafka_port']}"
    assert exports["PROMETHEUS_URL"] == f"http://127.0.0.1:{ports['prometheus_port']}"
    assert set(exports) >= {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "PROMETHEUS_URL", "API_URL", "DAGSTER_URL"}
    with psycopg.connect(exports["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM outbox_events").fetchone() == (0,)
    assert httpx.get(exports["PROMETHEUS_URL"] + "/-/ready").status_code == 200

    second = aether(env, "stack", "up", "--services", "infra")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "postgres: already running" in second.stdout
    assert "kafka: already running" in second.stdout
    assert "prometheus: already running" in second.stdout
    assert stack_exports(env) == exports  # what is running keeps its ports

    status = aether(env, "stack", "status").stdout
    assert "kafka" in status and "running" in status

    down = aether(env, "stack", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    time.sleep(0.5)
    assert _processes_mentioning(str(state_dir)) == []
    assert "stopped" in aether(env, "stack", "status").stdout


def test_external_servers_are_used_and_none_started(state_dir):
    env = _isolated_env(state_dir)
    env["AETHER_EXTERNAL_DATABASE_URL"] = BASE_ENV["DATABASE_URL"]
    env["AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS"] = BASE_ENV["KAFKA_BOOTSTRAP_SERVERS"]
    r = aether(env, "stack", "up", "--services", "postgres,kafka")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "AETHER_EXTERNAL_DATABASE_URL is set" in r.stdout
    assert "AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS is set" in r.stdout
    assert not (state_dir / "pg").exists() and not (state_dir / "kafka").exists()
    assert _processes_mentioning(str(state_dir)) == []
    exports = aether(env, "stack", "env").stdout
    assert f"export KAFKA_BOOTSTRAP_SERVERS={BASE_ENV['KAFKA_BOOTSTRAP_SERVERS']}" in exports
    assert "external" in aether(env, "stack", "status").stdout


def test_timeout_names_the_piece_and_its_log(state_dir):
    env = _isolated_env(state_dir)
    env["AETHER_EXTERNAL_DATABASE_URL"] = BASE_ENV["DATABASE_URL"]
    env["AETHER_EXTERNAL_WAIT_SECONDS"] = "3"
    with refused_port() as nowhere:
        env["AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{nowhere}"
        r = aether(env, "stack", "up", "--services", "kafka", timeout=120)
    assert r.returncode == 1
    assert "kafka did not become ready" in r.stderr


def test_foreground_ctrl_c_stops_everything(state_dir):
    env = _isolated_env(state_dir)
    proc = subprocess.Popen([*CLI, "stack", "up", "--foreground",
                             "--services", "infra,api"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        lines.append(line)
        if "press Ctrl-C" in line or time.monotonic() > deadline:
            break
    assert any("press Ctrl-C" in line for line in lines), "".join(lines)
    api_url = stack_exports(env)["API_URL"]
    assert httpx.get(f"{api_url}/").json()["service"] == "aether-api"
    markers = (str(state_dir),)
    assert len(_processes_mentioning(*markers)) >= 4  # postgres, kafka, prometheus, uvicorn (+ workers)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, "".join(lines) + rest
    time.sleep(0.5)
    assert _processes_mentioning(*markers) == []


def test_kafka_cluster_id_never_reads_as_an_option(monkeypatch):
    """An id starting with '-' made `kafka-storage format` fail (1 fresh broker in 64)."""
    from devstack import stack

    # 0xf8 encodes to '-' as the first base64 character; the next uuid is an ordinary one.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" * 16)])
    monkeypatch.setattr(stack.uuid, "uuid4", lambda: next(draws))
    cid = stack.kafka_cluster_id()
    assert not cid.startswith("-")
    assert len(cid) == 22 and cid == "EBAQEBAQEBAQEBAQEBAQEA"


def test_a_port_taken_while_starting_is_retried_on_another(state_dir, monkeypatch, capsys):
    """With AETHER_PG_PORT=0 the stack picks a port and starts PostgreSQL on it. When another
    process binds that port first (here: this test, on purpose), the start fails on the bind
    conflict and is retried on a new port, which `stack env` then reports."""
    from devstack import stack

    for var in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AETHER_STACK_DIR", str(state_dir))
    monkeypatch.setenv("AETHER_PG_PORT", "0")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_pick = stack._bound_port
        monkeypatch.setattr(stack, "_bound_port", lambda: next(picks, None) or real_pick())
        cfg = stack.Config()
        try:
            stack.pick_ports(cfg, ("postgres",))
            assert cfg.pg_port == taken
            stack._start_on_ports(cfg, "postgres", stack.start_postgres)
        finally:
            stack.stop_postgres(cfg)
    out = capsys.readouterr().out
    assert "postgres: its port was taken meanwhile" in out, out
    assert cfg.pg_port not in (0, taken)
    assert stack_exports({**os.environ})["DATABASE_URL"].endswith(f":{cfg.pg_port}/crm")


def test_a_server_stops_on_sigterm_even_if_its_launcher_ignored_it(state_dir, monkeypatch, capsys):
    """An ignored signal survives exec, and a JVM started with SIGTERM ignored never handles it:
    `down` then waited out its timeout and killed Kafka, 20 s per stop, whenever the stack was
    started from a process that ignored SIGTERM. This suite's own process comes to when it was
    launched in the background (SIGINT ignored) and has run Dagster in-process, which copies
    SIGINT's disposition onto SIGTERM: four minutes of `make test`. The stack must start its
    servers with the stop signals at default."""
    from devstack import stack

    monkeypatch.setenv("AETHER_STACK_DIR", str(state_dir))
    cfg = stack.Config()
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        # `sleep` installs no handler of its own: it does whatever it inherited.
        stack._spawn(cfg, "probe", ["sleep", "60"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stack._stop_group(cfg, "probe", timeout=10)
    out = capsys.readouterr().out
    assert "probe: stopping" in out and "SIGKILL" not in out, out
