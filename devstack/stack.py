"""The local stack: real PostgreSQL 15, Apache Kafka (KRaft) and Prometheus, plus the platform's
own processes (API, Dagster webserver and daemon), started and stopped by the project itself.

Every piece is a process we start detached, with a pid file and a log under the state directory
(`.stack/` by default, git-ignored). `up` is idempotent: what already answers is left alone.
Waiting shows progress, and a timeout names the piece that failed and the path of its log.

With DATABASE_URL or KAFKA_BOOTSTRAP_SERVERS set, that server is used and none is started.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

INFRA = ("postgres", "kafka", "prometheus")
PLATFORM = ("api", "dagster-webserver", "dagster-daemon")
ALL = INFRA + PLATFORM


class StackError(RuntimeError):
    """A piece failed; the message names it and the log to read."""


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def default_api_workers() -> int:
    """One uvicorn worker per core, less one for PostgreSQL on the same machine. Measured on 2
    cores (bench/api_write.py): 1 worker served 1,011 creates/s, 2 workers 853, because the
    second worker competes with the database for the CPU and every request waits on both."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass
class Config:
    """Where the stack lives and listens. Every field can be overridden from the environment so
    that tests can run a second, isolated stack beside the developer's."""

    state_dir: Path = field(default_factory=lambda: Path(os.environ.get("AETHER_STACK_DIR", REPO / ".stack")).resolve())
    pg_port: int = field(default_factory=lambda: _env_int("AETHER_PG_PORT", 55432))
    kafka_port: int = field(default_factory=lambda: _env_int("AETHER_KAFKA_PORT", 9092))
    kafka_controller_port: int = field(default_factory=lambda: _env_int("AETHER_KAFKA_CONTROLLER_PORT", 9093))
    prometheus_port: int = field(default_factory=lambda: _env_int("AETHER_PROMETHEUS_PORT", 9090))
    api_port: int = field(default_factory=lambda: _env_int("AETHER_API_PORT", 8080))
    api_workers: int = field(default_factory=lambda: _env_int("AETHER_API_WORKERS", default_api_workers()))
    dagster_port: int = field(default_factory=lambda: _env_int("AETHER_DAGSTER_PORT", 3000))
    external_database_url: str | None = field(default_factory=lambda: os.environ.get("DATABASE_URL") or None)
    external_kafka: str | None = field(default_factory=lambda: os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None)

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pids(self) -> Path:
        return self.state_dir / "pids"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    @property
    def database_url(self) -> str:
        return self.external_database_url or f"postgresql://aether@127.0.0.1:{self.pg_port}/crm"

    @property
    def dagster_pg_url(self) -> str:
        from aether_platform.db_url import with_database

        url = os.environ.get("DAGSTER_PG_URL") or with_database(self.database_url, "dagster")
        # dagster-postgres is written for psycopg2, but SQLAlchemy 2.1 picks psycopg 3 for a bare
        # postgresql:// URL, and psycopg 3's server-side binding breaks Dagster's
        # `NOTIFY run_events, %(id)s`: runs then never start. Name the driver explicitly.
        return re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url)

    @property
    def kafka_bootstrap(self) -> str:
        return self.external_kafka or f"127.0.0.1:{self.kafka_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def dagster_url(self) -> str:
        return f"http://127.0.0.1:{self.dagster_port}"

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster"

    def env(self) -> dict[str, str]:
        """What a client of the running stack needs; `aether stack env` prints it as exports."""
        return {
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "PROMETHEUS_URL": self.prometheus_url,
            "API_URL": self.api_url,
            "DAGSTER_URL": self.dagster_url,
            "DAGSTER_PG_URL": self.dagster_pg_url,
            "DAGSTER_HOME": str(self.dagster_home),
        }


# --------------------------------------------------------------------------- output


def say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def wait_until(name: str, what: str, check: Callable[[], bool], timeout: float, log: Path | None,
               alive: Callable[[], bool] | None = None) -> None:
    """Poll `check` with a progress line every few seconds; fail naming the piece and its log."""
    start = time.monotonic()
    last_report = start
    while True:
        try:
            if check():
                say(f"{name}: ready ({time.monotonic() - start:.1f}s)")
                return
        except Exception:  # noqa: BLE001 - not ready yet; the timeout reports it
            pass
        now = time.monotonic()
        if alive is not None and not alive():
            raise StackError(f"{name} exited while starting ({what}). {_log_hint(log)}")
        if now - start > timeout:
            raise StackError(f"{name} did not become ready within {timeout:.0f}s ({what}). {_log_hint(log)}")
        if now - last_report >= 3:
            say(f"{name}: waiting for {what} … {now - start:.0f}s")
            last_report = now
        time.sleep(0.25)


def _log_hint(log: Path | None) -> str:
    return f"Log: {log}" if log else "It is an external server: check it and the URL you gave."


def _external_wait() -> float:
    return float(os.environ.get("AETHER_EXTERNAL_WAIT_SECONDS", 60))


# --------------------------------------------------------------------------- processes


def _pidfile(cfg: Config, name: str) -> Path:
    return cfg.pids / f"{name}.pid"


def _read_pid(cfg: Config, name: str) -> int | None:
    try:
        return int(_pidfile(cfg, name).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


def running(cfg: Config, name: str) -> bool:
    if name == "postgres":
        return _pg_running(cfg)
    return _alive(_read_pid(cfg, name))


def _spawn(cfg: Config, name: str, argv: list[str], env: dict[str, str] | None = None,
           cwd: Path = REPO) -> int:
    cfg.logs.mkdir(parents=True, exist_ok=True)
    cfg.pids.mkdir(parents=True, exist_ok=True)
    log = open(cfg.log(name), "ab")
    log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
    log.flush()
    # A new session: Ctrl-C in the terminal reaches only the stack command, which then stops
    # each piece in order; `down` can signal the whole process group (uvicorn workers, the
    # Dagster code server and its runs).
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=cwd, env={**os.environ, **(env or {})}, start_new_session=True)
    log.close()
    _pidfile(cfg, name).write_text(str(proc.pid))
    return proc.pid


def _stop_group(cfg: Config, name: str, timeout: float = 20.0) -> bool:
    pid = _read_pid(cfg, name)
    if not _alive(pid):
        _pidfile(cfg, name).unlink(missing_ok=True)
        return False
    say(f"{name}: stopping (pid {pid})")
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.2)
    if _group_alive(pid):
        say(f"{name}: still running after {timeout:.0f}s, sending SIGKILL")
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
    _pidfile(cfg, name).unlink(missing_ok=True)
    return True


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process remains in the process group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return 200 <= resp.status < 300


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- postgres

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin",)


def _pg_bin(tool: str) -> str:
    for d in filter(None, [os.environ.get("AETHER_PG_BIN"), *PG_BIN_CANDIDATES]):
        if Path(d, tool).exists():
            return str(Path(d, tool))
    found = shutil.which(tool)
    if found:
        return found
    raise StackError(
        f"postgres: `{tool}` not found. Install PostgreSQL 15 (Debian: `apt-get install -y postgresql`)"
        " or set AETHER_PG_BIN to its bin directory, or set DATABASE_URL to use your own server."
    )


def _as_pg_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as root we run it as the `postgres` system user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _pg_dir(cfg: Config) -> Path:
    return cfg.state_dir / "pg"


def _pg_data(cfg: Config) -> Path:
    return _pg_dir(cfg) / "data"


def _pg_running(cfg: Config) -> bool:
    if not (_pg_data(cfg) / "PG_VERSION").exists():
        return False
    r = subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "status", "-D", str(_pg_data(cfg))]),
                       capture_output=True, text=True)
    return r.returncode == 0


def _pg_isready(cfg: Config) -> bool:
    r = subprocess.run([_pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(cfg.pg_port)])
    return r.returncode == 0


def _ensure_pg_dir_usable(cfg: Config) -> None:
    pgdir = _pg_dir(cfg)
    if os.geteuid() != 0:
        pgdir.mkdir(parents=True, exist_ok=True)
        return
    # The postgres user must be able to reach the data directory. A checkout under /root is
    # not traversable for it, so the cluster then lives under /var/lib with a symlink here.
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(cfg.state_dir)],
                           capture_output=True)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    if probe.returncode != 0 and not pgdir.exists():
        digest = hashlib.sha1(str(cfg.state_dir).encode()).hexdigest()[:12]
        real = Path("/var/lib/aether-stack") / digest / "pg"
        real.mkdir(parents=True, exist_ok=True)
        os.chmod(real.parent, 0o755)
        pgdir.symlink_to(real)
        say(f"postgres: {cfg.state_dir} is not reachable by the postgres user; data lives in {real}")
    pgdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "-R", "postgres:postgres", str(pgdir.resolve())], check=True)


def start_postgres(cfg: Config) -> None:
    if cfg.external_database_url:
        say("postgres: DATABASE_URL is set, using that server (none started)")
        _wait_external_pg(cfg)
        return
    if _pg_running(cfg):
        say(f"postgres: already running on 127.0.0.1:{cfg.pg_port}")
    else:
        if _port_open(cfg.pg_port):
            raise StackError(f"postgres: port {cfg.pg_port} is taken by another process; set AETHER_PG_PORT")
        _ensure_pg_dir_usable(cfg)
        data = _pg_data(cfg)
        log = cfg.log("postgres")
        cfg.logs.mkdir(parents=True, exist_ok=True)
        if not (data / "PG_VERSION").exists():
            say(f"postgres: initdb {data}")
            r = subprocess.run(_as_pg_user([_pg_bin("initdb"), "-D", str(data), "-U", "aether", "--auth=trust",
                                            "--encoding=UTF8", "--locale=C.UTF-8"]),
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise StackError(f"postgres: initdb failed: {r.stderr.strip() or r.stdout.strip()}")
        sock = _pg_dir(cfg) / "run"
        if not sock.exists():
            sock.mkdir()
            if os.geteuid() == 0:
                shutil.chown(sock, "postgres", "postgres")
        # pg_ctl writes the server log itself, as the postgres user: give it a file it can write.
        log.touch()
        if os.geteuid() == 0:
            shutil.chown(log, "postgres", "postgres")
        opts = (f"-p {cfg.pg_port} -c listen_addresses=127.0.0.1 -k {sock} -c max_connections=200"
                " -c shared_buffers=256MB -c fsync=on")
        say(f"postgres: starting on 127.0.0.1:{cfg.pg_port} (log: {log})")
        r = subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "start", "-D", str(data), "-l", str(log),
                                        "-o", opts, "-w", "-t", "60"]), capture_output=True, text=True)
        if r.returncode != 0:
            raise StackError(f"postgres: pg_ctl start failed ({r.stdout.strip()} {r.stderr.strip()}). Log: {log}")
    wait_until("postgres", "pg_isready", lambda: _pg_isready(cfg), 60, cfg.log("postgres"))
    for db in ("crm", "dagster"):
        _create_database(cfg, db)


def _wait_external_pg(cfg: Config) -> None:
    import psycopg

    from aether_platform.db_url import libpq_url

    def ok() -> bool:
        with psycopg.connect(libpq_url(cfg.database_url), connect_timeout=2):
            return True

    wait_until("postgres", f"a connection to {_redact(cfg.database_url)}", ok, _external_wait(), None)
    from aether_platform.db_url import database_name

    _create_database(cfg, database_name(cfg.dagster_pg_url), required=False)


def _create_database(cfg: Config, db: str, required: bool = True) -> None:
    import psycopg

    from aether_platform.db_url import libpq_url, with_database

    admin = with_database(cfg.database_url, "postgres")
    try:
        with psycopg.connect(libpq_url(admin), autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{db}"')
                say(f"postgres: created database {db}")
    except psycopg.Error as exc:
        if required:
            raise StackError(f"postgres: could not create database {db}: {exc}") from exc
        say(f"postgres: could not check/create database {db} ({exc}); assuming it exists")


def stop_postgres(cfg: Config) -> None:
    if cfg.external_database_url or not _pg_running(cfg):
        return
    say("postgres: stopping")
    subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "stop", "-D", str(_pg_data(cfg)), "-m", "fast", "-w", "-t", "60"]),
                   capture_output=True)


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)


# --------------------------------------------------------------------------- kafka


def kafka_version() -> str:
    pom = (HERE / "kafka" / "pom.xml").read_text()
    return re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)


def kafka_libs() -> Path:
    """The broker's jars, fetched once per Kafka version into a cache outside the checkout."""
    cache = Path(os.environ.get("AETHER_CACHE_DIR", Path.home() / ".cache" / "aether"))
    pom = HERE / "kafka" / "pom.xml"
    digest = hashlib.sha1(pom.read_bytes()).hexdigest()[:10]
    libs = cache / f"kafka-{kafka_version()}-{digest}"
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError("kafka: Maven (`mvn`) is needed once to fetch the Kafka jars. "
                         "Debian: `apt-get install -y maven`.")
    tmp = libs.with_name(libs.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"kafka: fetching Apache Kafka {kafka_version()} jars from Maven Central into {libs} (first run only)")
    log = cache / "mvn.log"
    cache.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        r = subprocess.run([mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
                            "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"], stdout=out, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise StackError(f"kafka: `mvn dependency:copy-dependencies` failed. Log: {log}")
    (tmp / ".complete").write_text(kafka_version())
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def _java() -> str:
    java = shutil.which("java")
    if not java:
        raise StackError("kafka: Java 17 is needed. Debian: `apt-get install -y openjdk-17-jre-headless`.")
    return java


def _kafka_ready(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    from aether_platform.topics import silent_logger

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000,
                         "logger": silent_logger("aether.stack.kafka")})
    md = admin.list_topics(timeout=2)
    return bool(md.brokers)


def start_kafka(cfg: Config) -> None:
    if cfg.external_kafka:
        say("kafka: KAFKA_BOOTSTRAP_SERVERS is set, using that cluster (none started)")
        wait_until("kafka", f"AdminClient metadata from {cfg.external_kafka}",
                   lambda: _kafka_ready(cfg.external_kafka), _external_wait(), None)
        return
    log = cfg.log("kafka")
    if running(cfg, "kafka"):
        say(f"kafka: already running on {cfg.kafka_bootstrap}")
    else:
        if _port_open(cfg.kafka_port):
            raise StackError(f"kafka: port {cfg.kafka_port} is taken by another process; set AETHER_KAFKA_PORT")
        libs = kafka_libs()
        kdir = cfg.state_dir / "kafka"
        data = kdir / "data"
        kdir.mkdir(parents=True, exist_ok=True)
        props = kdir / "server.properties"
        props.write_text((HERE / "kafka" / "server.properties.tmpl").read_text().format(
            port=cfg.kafka_port, controller_port=cfg.kafka_controller_port, data_dir=data))
        cp = f"{libs}/*"
        jvm = [_java(), "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={HERE / 'kafka' / 'log4j2.properties'}",
               f"-Dkafka.logs.file={log}", "-cp", cp]
        if not (data / "meta.properties").exists():
            cluster_file = kdir / "cluster.id"
            if not cluster_file.exists():
                cluster_file.write_text(kafka_cluster_id())
            say("kafka: formatting KRaft storage")
            r = subprocess.run([*jvm, "kafka.tools.StorageTool", "format",
                                f"--cluster-id={cluster_file.read_text().strip()}",
                                "-c", str(props), "--ignore-formatted"], capture_output=True, text=True)
            if r.returncode != 0:
                raise StackError(f"kafka: storage format failed: {r.stdout.strip()} {r.stderr.strip()}")
        say(f"kafka: starting broker on {cfg.kafka_bootstrap} (log: {log})")
        _spawn(cfg, "kafka", [*jvm, "kafka.Kafka", str(props)])
    wait_until("kafka", f"AdminClient metadata from {cfg.kafka_bootstrap}", lambda: _kafka_ready(cfg.kafka_bootstrap),
               120, log, alive=lambda: running(cfg, "kafka"))


def kafka_cluster_id() -> str:
    """A random cluster id as Kafka's Uuid.randomUuid makes them: 22 URL-safe base64 characters,
    never starting with '-', which command-line parsers read as an option (1 in 64 ids did, and
    `kafka-storage format -t -…` then failed)."""
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


# --------------------------------------------------------------------------- prometheus


def rules_glob() -> str:
    return str(REPO / "dashboards_py" / "generated" / "prometheus" / "*.yml")


def start_prometheus(cfg: Config) -> None:
    log = cfg.log("prometheus")
    url = cfg.prometheus_url
    if running(cfg, "prometheus"):
        say(f"prometheus: already running on {url}")
    else:
        binary = shutil.which("prometheus")
        if not binary:
            raise StackError("prometheus: not found. Debian: `apt-get install -y prometheus`.")
        if _port_open(cfg.prometheus_port):
            raise StackError(f"prometheus: port {cfg.prometheus_port} is taken; set AETHER_PROMETHEUS_PORT")
        pdir = cfg.state_dir / "prometheus"
        pdir.mkdir(parents=True, exist_ok=True)
        conf = pdir / "prometheus.yml"
        conf.write_text((HERE / "prometheus" / "prometheus.yml.tmpl").read_text().format(
            rules_glob=rules_glob(), api_target=f"127.0.0.1:{cfg.api_port}"))
        say(f"prometheus: starting on {url} (log: {log})")
        _spawn(cfg, "prometheus", [binary, f"--config.file={conf}", f"--storage.tsdb.path={pdir / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{cfg.prometheus_port}",
                                   "--web.enable-lifecycle", "--storage.tsdb.retention.time=3d"])
    wait_until("prometheus", f"{url}/-/ready", lambda: _http_ok(f"{url}/-/ready"), 60, log,
               alive=lambda: running(cfg, "prometheus"))


# --------------------------------------------------------------------------- platform


def migrate(cfg: Config) -> None:
    say("migrations: alembic upgrade head")
    r = subprocess.run([sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
                       cwd=REPO, env={**os.environ, "DATABASE_URL": cfg.database_url, "AETHER_ALEMBIC_QUIET": "1"},
                       capture_output=True, text=True)
    if r.returncode != 0:
        log = cfg.log("migrations")
        cfg.logs.mkdir(parents=True, exist_ok=True)
        log.write_text(r.stdout + r.stderr)
        raise StackError(f"migrations: alembic upgrade head failed. Log: {log}")
    say("migrations: at head")


def provision_topic(cfg: Config) -> None:
    from aether_platform.topics import declared_topic, ensure_topic

    spec = declared_topic()
    result = ensure_topic(cfg.kafka_bootstrap, spec)
    say(f"kafka: topic {spec.name} {result.action} ({result.partitions} partitions)")


def _platform_env(cfg: Config) -> dict[str, str]:
    return {**cfg.env(), "PYTHONPATH": str(REPO)}


def _venv_bin(tool: str) -> str:
    local = Path(sys.executable).parent / tool
    return str(local) if local.exists() else tool


def start_api(cfg: Config) -> None:
    log = cfg.log("api")
    if running(cfg, "api"):
        say(f"api: already running on {cfg.api_url}")
    else:
        if _port_open(cfg.api_port):
            raise StackError(f"api: port {cfg.api_port} is taken; set AETHER_API_PORT")
        say(f"api: starting on {cfg.api_url} with {cfg.api_workers} workers (log: {log})")
        # uvicorn workers are separate processes: prometheus_client aggregates them through files.
        metrics_dir = cfg.state_dir / "api-metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        _spawn(cfg, "api", [sys.executable, "-m", "api", "--port", str(cfg.api_port), "--workers", str(cfg.api_workers)],
               env={**_platform_env(cfg), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    wait_until("api", f"GET {cfg.api_url}/", lambda: _http_answers(f"{cfg.api_url}/"), 60, log,
               alive=lambda: running(cfg, "api"))


def _http_answers(url: str) -> bool:
    """Any HTTP answer counts: a 503 `degraded` health page still means the process serves."""
    import urllib.error

    try:
        return _http_ok(url)
    except urllib.error.HTTPError as exc:
        return exc.code == 503


def _write_dagster_home(cfg: Config) -> None:
    cfg.dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "dagster" / "dagster.yaml", cfg.dagster_home / "dagster.yaml")


def start_dagster(cfg: Config) -> None:
    _write_dagster_home(cfg)
    env = _platform_env(cfg)
    workspace = str(REPO / "workspace.yaml")
    log = cfg.log("dagster-webserver")
    if running(cfg, "dagster-webserver"):
        say(f"dagster-webserver: already running on {cfg.dagster_url}")
    else:
        if _port_open(cfg.dagster_port):
            raise StackError(f"dagster-webserver: port {cfg.dagster_port} is taken; set AETHER_DAGSTER_PORT")
        say(f"dagster-webserver: starting on {cfg.dagster_url} (log: {log})")
        _spawn(cfg, "dagster-webserver", [_venv_bin("dagster-webserver"), "-h", "127.0.0.1", "-p", str(cfg.dagster_port),
                                          "-w", workspace], env=env)
    if running(cfg, "dagster-daemon"):
        say("dagster-daemon: already running")
    else:
        say(f"dagster-daemon: starting (log: {cfg.log('dagster-daemon')})")
        _spawn(cfg, "dagster-daemon", [_venv_bin("dagster-daemon"), "run", "-w", workspace], env=env)
    wait_until("dagster-webserver", f"GET {cfg.dagster_url}/server_info",
               lambda: _http_ok(f"{cfg.dagster_url}/server_info"), 240, log,
               alive=lambda: running(cfg, "dagster-webserver"))
    wait_until("dagster-daemon", "the daemon process to stay up", lambda: True, 5, cfg.log("dagster-daemon"),
               alive=lambda: running(cfg, "dagster-daemon"))


# --------------------------------------------------------------------------- commands


def up(cfg: Config, services: tuple[str, ...] = ALL) -> None:
    t0 = time.monotonic()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    if "postgres" in services:
        start_postgres(cfg)
        migrate(cfg)
    if "kafka" in services:
        start_kafka(cfg)
        provision_topic(cfg)
    if "prometheus" in services:
        start_prometheus(cfg)
    if "api" in services:
        start_api(cfg)
    if "dagster-webserver" in services or "dagster-daemon" in services:
        start_dagster(cfg)
    say(f"up in {time.monotonic() - t0:.1f}s")


def down(cfg: Config, services: tuple[str, ...] = ALL) -> None:
    """Stop the given services (all by default), dependants first; the others keep running."""
    for name in reversed(ALL):
        if name not in services:
            continue
        if _is_external(cfg, name):
            say(f"{name}: external, not stopped")
        elif name == "postgres":
            stop_postgres(cfg)
        else:
            _stop_group(cfg, name)
    say("down" if set(services) >= set(ALL) else f"down: {', '.join(s for s in ALL if s in services)}")


def restart(cfg: Config, services: tuple[str, ...]) -> None:
    """Bounce the given services while the rest keep running: the API, Dagster and the relay
    reconnect to a restarted PostgreSQL or Kafka on their own."""
    down(cfg, services)
    up(cfg, services)


def status(cfg: Config) -> dict[str, str]:
    out = {}
    for name in ALL:
        if name == "postgres" and cfg.external_database_url:
            out[name] = f"external ({_redact(cfg.database_url)})"
        elif name == "kafka" and cfg.external_kafka:
            out[name] = f"external ({cfg.external_kafka})"
        elif name == "postgres":
            out[name] = f"running on 127.0.0.1:{cfg.pg_port}" if _pg_running(cfg) else "stopped"
        else:
            pid = _read_pid(cfg, name)
            out[name] = f"running (pid {pid})" if _alive(pid) else "stopped"
    return out


def print_urls(cfg: Config, services: tuple[str, ...]) -> None:
    lines = [
        ("API (CRM, SSE, metrics)", cfg.api_url, "api"),
        ("Command Center", f"{cfg.api_url}/ops/crm-events", "api"),
        ("API docs", f"{cfg.api_url}/docs", "api"),
        ("Dagster UI", cfg.dagster_url, "dagster-webserver"),
        ("Prometheus", cfg.prometheus_url, "prometheus"),
        ("Kafka bootstrap", cfg.kafka_bootstrap, "kafka"),
        ("PostgreSQL", _redact(cfg.database_url), "postgres"),
    ]
    print()
    for label, url, svc in lines:
        if svc in services:
            print(f"  {label:<24} {url}")
    print(flush=True)


def foreground(cfg: Config, services: tuple[str, ...]) -> int:
    """`make run`: bring everything up, print the URLs, stop it all on Ctrl-C or SIGTERM."""
    stopping = False

    def _stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        up(cfg, services)
    except StackError as exc:
        say(f"ERROR: {exc}")
        down(cfg)
        return 1
    except KeyboardInterrupt:
        down(cfg)
        return 130
    print_urls(cfg, services)
    say("running; press Ctrl-C to stop everything")
    watched = [s for s in services if s != "postgres"]
    while not stopping:
        time.sleep(0.5)
        dead = [s for s in watched if s in PLATFORM + INFRA and not _is_external(cfg, s) and not running(cfg, s)]
        if dead:
            say(f"ERROR: {', '.join(dead)} exited; see {', '.join(str(cfg.log(d)) for d in dead)}")
            break
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    down(cfg)
    return 0 if stopping else 1


def _is_external(cfg: Config, service: str) -> bool:
    return (service == "kafka" and bool(cfg.external_kafka)) or (service == "postgres" and bool(cfg.external_database_url))


def parse_services(spec: str | None) -> tuple[str, ...]:
    if not spec or spec == "all":
        return ALL
    names: list[str] = []
    for part in (s.strip() for s in spec.split(",")):
        for name in INFRA if part == "infra" else (ALL if part == "all" else (part,)):
            if name and name not in names:
                names.append(name)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise StackError(f"unknown service(s): {', '.join(unknown)}; known: {', '.join(ALL)}, or infra/all")
    return tuple(names)
