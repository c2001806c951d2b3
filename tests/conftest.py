"""Shared fixtures. Tests talk to real servers: the stack's PostgreSQL and Kafka (started by
`make test`), with a database and a topic of their own per pytest session so that concurrent
sessions and the developer's data never meet.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from aether_platform.db_url import libpq_url, with_database
from devstack import stack

REPO = Path(__file__).resolve().parent.parent
RUN_ID = uuid.uuid4().hex[:8]
# How tests run the platform's two programs: as users and the image do, one definition each.
API_LAUNCH = (sys.executable, "-m", "api")
CLI = (sys.executable, "-m", "api.cli")


def _stack_env() -> dict[str, str]:
    cfg = stack.Config()
    return {"DATABASE_URL": cfg.database_url, "KAFKA_BOOTSTRAP_SERVERS": cfg.kafka_bootstrap,
            "PROMETHEUS_URL": cfg.prometheus_url}


BASE_ENV = {k: os.environ.get(k) or v for k, v in _stack_env().items()}


# No test picks a "free" port for another process to bind: between the pick and the bind,
# anything on the machine may take it. A server either inherits a socket this process bound
# (ApiServer), binds port 0 itself and says what it got, or is started by the stack, which does
# one of those or retries on a bind conflict (devstack/stack.py, "a port set to 0").


@contextmanager
def refused_port():
    """A port where nothing listens while the context lasts: bound here and never listening, so a
    connection is refused at once, and (no SO_REUSEADDR) no other process can bind it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# Debian's Chromium; test tools never download a browser. The flags keep it off the network (the
# machine's closed network refuses its background connections) and out of any profile.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch_chromium(pw):
    """A browser for a playwright session (`with sync_playwright() as pw`), the one way tests launch one."""
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def required_binary(name: str) -> str:
    """The path of a tool that `make test` installs (prometheus, promtool). Missing, the test
    fails: a skip would let a plain `pytest` go green with that evidence never produced."""
    path = shutil.which(name)
    assert path, f"`{name}` is not on PATH: `make test` installs it (Debian: apt-get install -y prometheus)"
    return path


def stack_exports(env: dict[str, str]) -> dict[str, str]:
    """`aether stack env` of the stack that `env` names, as a dict: the ports it really uses."""
    r = subprocess.run([*CLI, "stack", "env"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(line.removeprefix("export ").split("=", 1) for line in r.stdout.splitlines()
                if line.startswith("export "))


@pytest.fixture(scope="session")
def base_database_url() -> str:
    """The stack's server (or DATABASE_URL's), at its `crm` database."""
    url = BASE_ENV["DATABASE_URL"]
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=5):
            pass
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL is not reachable at {url}: {exc}. Run `make up` (or `make test`, which starts it).")
    return url


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    from confluent_kafka.admin import AdminClient

    bootstrap = BASE_ENV["KAFKA_BOOTSTRAP_SERVERS"]
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15)
    assert md.brokers, f"Kafka is not reachable at {bootstrap}"
    return bootstrap


def wait_for(what: str, check, timeout: float, *procs: subprocess.Popen, interval: float = 0.05) -> None:
    """Poll `check` until it is true; fail naming `what` after `timeout` seconds, or at once if
    one of `procs` (processes the wait depends on) has exited."""
    deadline = time.monotonic() + timeout
    while not check():
        for p in procs:
            assert p.poll() is None, f"a process exited with {p.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def create_database(base_url: str, name: str) -> str:
    admin = libpq_url(with_database(base_url, "postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(base_url, name)


def drop_database(base_url: str, name: str) -> None:
    admin = libpq_url(with_database(base_url, "postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def alembic(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), *args],
                          cwd=REPO, env={**os.environ, "DATABASE_URL": url, "AETHER_ALEMBIC_QUIET": "1"},
                          capture_output=True, text=True)


def migrated_database(base_url: str, name: str) -> str:
    """A fresh database `name` beside base_url's, migrated to head; drop it with drop_database."""
    url = create_database(base_url, name)
    r = alembic(url, "upgrade", "head")
    assert r.returncode == 0, r.stderr
    return url


@pytest.fixture(scope="session")
def database_url(base_database_url) -> str:
    """A migrated database of this session's own, dropped at the end."""
    name = f"aether_test_{RUN_ID}"
    url = migrated_database(base_database_url, name)
    os.environ["DATABASE_URL"] = url
    yield url
    drop_database(base_database_url, name)


@pytest.fixture(scope="session")
def topic(kafka_bootstrap) -> str:
    """A 3-partition topic of this session's own, deleted at the end."""
    from confluent_kafka.admin import AdminClient

    from aether_platform.topics import TopicSpec, ensure_topic

    name = f"aetherlink.events.test-{RUN_ID}"
    ensure_topic(kafka_bootstrap, TopicSpec(name=name, partitions=3, replication_factor=1))
    os.environ["AETHER_TOPIC"] = name
    yield name
    AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics([name])


@pytest.fixture(scope="session")
def platform_env(database_url, kafka_bootstrap, topic) -> dict[str, str]:
    """Environment for a platform process (API, relay) bound to this session's DB and topic."""
    from aether_platform.settings import get_settings

    get_settings.cache_clear()
    return {"DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "AETHER_TOPIC": topic,
            "PYTHONPATH": str(REPO)}


class ApiServer:
    """A real API process (`python -m api`, as everywhere) on a port of its own; restartable.

    The test process binds the listening socket (port 0, or the given one) and keeps it for the
    server's whole life, handing it to each start with `--fd`: no other process can take the port
    between a choice and a bind, and a restart keeps the same URL. While no process serves,
    connections wait in the socket's backlog instead of being refused."""

    def __init__(self, env: dict[str, str], log_dir: Path, workers: int = 1, port: int = 0):
        self.env = env
        self.workers = workers
        self.sock = socket.create_server(("127.0.0.1", port), backlog=2048)
        self.port = self.sock.getsockname()[1]
        self.log_path = log_dir / f"api-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "ApiServer":
        log = open(self.log_path, "ab")
        fd = self.sock.fileno()
        self.proc = subprocess.Popen(
            [*API_LAUNCH, "--fd", str(fd), "--workers", str(self.workers)], pass_fds=(fd,),
            cwd=REPO, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                # /livez: up means serving, whatever the database and Kafka are doing.
                httpx.get(self.url + "/livez", timeout=1.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"API did not answer within {timeout}s; log: {self.log_path}")

    def stop(self, sig: int = 15) -> None:
        """Stop the process; the port stays this server's until close()."""
        stop_group(self.proc, sig)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.sock.close()


def stop_group(proc: subprocess.Popen | None, sig: int = 15, timeout: float = 15) -> None:
    """Signal a process started with start_new_session=True and all its children; SIGKILL what
    is still there after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=5)


def read_to_end(consumer, timeout: float = 60.0) -> list:
    """Every record the assigned `consumer` has not read yet, up to each partition's high
    watermark as it stands now. Counting duplicates needs the end: a re-sent record comes after
    its original, often last in its partition (what a broker restart leaves), so reading until
    every id has been seen once would miss it."""
    from confluent_kafka import TopicPartition

    assignment = consumer.assignment()
    assert assignment, "the consumer has no partitions assigned"
    marks = {(tp.topic, tp.partition): consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                                        timeout=10) for tp in assignment}
    # position() is the next offset to read; negative until the partition's first fetch.
    position = {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else marks[(tp.topic, tp.partition)][0]
                for tp in consumer.position(assignment)}
    records = []
    deadline = time.monotonic() + timeout
    while any(position[k] < high for k, (_low, high) in marks.items()):
        assert time.monotonic() < deadline, f"not at the end after {timeout}s: at {position}, end {marks}"
        for msg in consumer.consume(1000, timeout=0.2):
            if msg.error() is None:
                records.append(msg)
                position[(msg.topic(), msg.partition())] = msg.offset() + 1
    return records


class ThrowawayKafka:
    """A single-node Kafka of the devstack in a directory and on ports of its own, which a test
    may stop, kill and start again; the suite's shared broker is never touched."""

    def __init__(self):
        self.state_dir = REPO / ".stack" / "test-stacks" / uuid.uuid4().hex[:8]
        self.state_dir.mkdir(parents=True)
        # Ports 0: the stack picks them, and a restart keeps them (clients keep their bootstrap).
        self.env = {**{k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"},
                    "AETHER_STACK_DIR": str(self.state_dir), "AETHER_KAFKA_PORT": "0",
                    "AETHER_KAFKA_CONTROLLER_PORT": "0",
                    # Set, so that the stack never starts or stops a PostgreSQL of its own.
                    "AETHER_EXTERNAL_DATABASE_URL": BASE_ENV["DATABASE_URL"]}
        self.bootstrap = ""

    def up(self) -> None:
        r = subprocess.run([*CLI, "stack", "up", "--services", "kafka"],
                           cwd=REPO, env=self.env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        bootstrap = stack_exports(self.env)["KAFKA_BOOTSTRAP_SERVERS"]
        assert self.bootstrap in ("", bootstrap), f"the restarted broker moved from {self.bootstrap} to {bootstrap}"
        self.bootstrap = bootstrap

    def stop(self, sig: int = 15, timeout: float = 60) -> None:
        pid = int((self.state_dir / "pids" / "kafka.pid").read_text())
        os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.killpg(pid, 9)

    def close(self) -> None:
        subprocess.run([*CLI, "stack", "down"], cwd=REPO, env=self.env,
                       capture_output=True, timeout=120)
        shutil.rmtree(self.state_dir, ignore_errors=True)


@pytest.fixture
def own_postgres():
    """A throwaway PostgreSQL of the test's own (the stack command, isolated dir and port), so
    that stopping it harms nobody."""
    state = REPO / ".stack" / "test-stacks" / uuid.uuid4().hex[:8]
    state.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env.update({"AETHER_STACK_DIR": str(state), "AETHER_PG_PORT": "0"})  # the stack picks; a restart keeps it
    urls = []

    def stack(action: str) -> None:
        r = subprocess.run([*CLI, "stack", action, "--services", "postgres"]
                           if action == "up" else [*CLI, "stack", action],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        if action == "up":
            urls.append(stack_exports(env)["DATABASE_URL"])
            assert len(set(urls)) == 1, f"the restarted server moved: {urls}"

    stack("up")
    yield urls[0], stack
    stack("down")
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def throwaway_kafka() -> ThrowawayKafka:
    kafka = ThrowawayKafka()
    kafka.up()
    yield kafka
    kafka.close()


@pytest.fixture(scope="session")
def api_server(platform_env, tmp_path_factory) -> ApiServer:
    server = ApiServer(platform_env, tmp_path_factory.mktemp("api")).start()
    yield server
    server.close()


@pytest.fixture
def tenant() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def db(database_url):
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        yield conn
