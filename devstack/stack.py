"""The local stack: real PostgreSQL 15, Apache Kafka (KRaft) and Prometheus, plus the platform's
own processes (API, Dagster webserver and daemon), started and stopped by the project itself.

Every piece is a process we start detached, with a pid file and a log under the state directory
(`.stack/` by default, git-ignored). `up` is idempotent: what already answers is left alone.
Waiting shows progress, and a failure names the piece, the path of its log and quotes the
log's last lines. In the foreground (`make run`) Ctrl-C stops what has started at any moment.

Using your own server is an explicit switch: with AETHER_EXTERNAL_DATABASE_URL or
AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS set, that server is used and none is started. The plain
DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS, which `aether stack env` prints for clients, never switch
the stack to external servers: after `eval "$(make -s env)"` the stack still runs its own.

Two profiles (`--profile`, AETHER_PROFILE): `development` (plaintext, auth off) and `production`,
the configuration of deploy/compose.yaml and the Helm values on this machine: TLS certificates made
at setup with openssl, Kafka over SASL_SSL (SCRAM-SHA-512), PostgreSQL over TLS only with
sslmode=verify-full clients, auth on, JSON logs (every line of its logs dir, servers included). It lives in `<state dir>/production`, beside the
development stack's state, so switching profiles never rewrites the other's data.
"""
from __future__ import annotations

import hashlib
import logging
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

PROFILES = ("development", "production")
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
    external_database_url: str | None = field(
        default_factory=lambda: os.environ.get("AETHER_EXTERNAL_DATABASE_URL") or None)
    external_kafka: str | None = field(
        default_factory=lambda: os.environ.get("AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS") or None)
    profile: str = field(default_factory=lambda: os.environ.get("AETHER_PROFILE") or "development")
    # Ports configured as 0: picked by the stack at start (see _start_on_ports).
    auto_ports: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise StackError(f"unknown profile {self.profile!r}; known: {', '.join(PROFILES)}")
        if self.production:
            self.state_dir = self.state_dir / "production"
        self.auto_ports = {a for attrs in _PORTS.values() for a in attrs if getattr(self, a) == 0}
        _load_ports(self)

    @property
    def production(self) -> bool:
        return self.profile == "production"

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
        if self.external_database_url:
            return self.external_database_url
        if self.production:
            # verify-full: the server's certificate must chain to our CA and name 127.0.0.1.
            return (f"postgresql://aether@127.0.0.1:{self.pg_port}/crm"
                    f"?sslmode=verify-full&sslrootcert={tls_dir(self) / 'ca.crt'}")
        return f"postgresql://aether@127.0.0.1:{self.pg_port}/crm"

    @property
    def dagster_pg_url(self) -> str:
        from aether_platform.db_url import with_database

        # An override only beside an external server: `make env` exports the stack's own value,
        # which must not pin a later stack (another AETHER_PG_PORT) to this one's database.
        override = os.environ.get("DAGSTER_PG_URL") if self.external_database_url else None
        url = override or with_database(self.database_url, "dagster")
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
            **{k: v for k, v in self.kafka_env().items() if v},
            **production_env(self),
        }

    def kafka_env(self) -> dict[str, str]:
        """KAFKA_* connection settings (aether_platform/kafka_client.py) for this stack's broker:
        those of our own broker's profile, or, for an external cluster, the caller's environment."""
        from aether_platform.kafka_client import env_names

        if self.external_kafka:
            # The cluster is the explicit switch's; its TLS/SASL settings are the caller's KAFKA_*.
            return {**{k: os.environ.get(k, "") for k in env_names()}, "KAFKA_BOOTSTRAP_SERVERS": self.external_kafka}
        own = {k: "" for k in env_names()}
        own["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap
        if self.production:
            own.update(production_kafka_env(self))
        return own

    def kafka_client_config(self) -> dict:
        """The librdkafka connection config for this stack's broker, for the stack's own clients."""
        from aether_platform.kafka_client import client_config
        from aether_platform.settings import Settings

        return client_config(settings=Settings(**self.kafka_env()))


# --------------------------------------------------------------------------- output


def say(msg: str) -> None:
    # With JSON logs (AETHER_LOG_FORMAT=json, or `aether --log-format json`), progress is a log
    # record on stderr like every other process's line; otherwise a line for the terminal.
    from aether_platform import logs

    if logs.active_format() == "json":
        logging.getLogger("aether.stack").info(msg)
    else:
        print(f"[stack] {msg}", flush=True)


def _dagster_log_format(cfg: Config) -> list[str]:
    """Dagster's own processes have their own switch; JSON when ours is, and always in the
    production profile (its processes log JSON whatever the launching shell's format)."""
    from aether_platform import logs

    return ["--log-format", "json"] if cfg.production or logs.active_format() == "json" else []


def _dagster_cmd(cfg: Config, tool: str, main_module: str) -> list[str]:
    """Dagster's `--log-format` covers its own loggers only; libraries it calls (its database
    retries) log through the root logger, which then prints plain text. With JSON logs the tool
    runs with our root handler installed first, so those lines are JSON too."""
    if not _dagster_log_format(cfg):
        return [_venv_bin(tool)]
    return [sys.executable, "-c", f"from aether_platform import logs; logs.configure('json'); "
                                  f"from {main_module} import main; main()"]


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
            raise StackError(f"{name} exited while starting ({what}). {_log_hint(log)}{log_tail(log)}")
        if now - start > timeout:
            raise StackError(f"{name} did not become ready within {timeout:.0f}s ({what}). "
                             f"{_log_hint(log)}{log_tail(log)}")
        if now - last_report >= 3:
            say(f"{name}: waiting for {what} … {now - start:.0f}s")
            last_report = now
        time.sleep(0.25)


def log_tail(log: Path | None, lines: int = 20) -> str:
    """The last lines of this start's log, indented, for the terminal: a crash's traceback should
    be on screen, not only behind a path. Empty when there is no log."""
    if log is None:
        return ""
    size = 64 * 1024
    text = _log_tail(log, size)
    if len(text) >= size:
        text = text.split("\n", 1)[-1]  # the first line read is likely cut
    # _spawn marks each start with a "==== … starting:" line; older runs' lines would only mislead.
    if "==== " in text:
        text = text.rsplit("==== ", 1)[-1].split("\n", 1)[-1]
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "".join(f"\n    | {line}" for line in tail)


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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _default_stop_signals() -> None:
    """In the forked child, before exec: the signals `down` stops a server with, back to their
    default action. An ignored signal stays ignored across exec, and a JVM (Kafka) started with
    SIGTERM ignored never installs its handler: `down` then waited its whole timeout and killed
    the broker: 20 s per Kafka stop. How a launcher comes to ignore SIGTERM: a job started in the
    background by a non-interactive shell ignores SIGINT, and Dagster's in-process execution
    copies SIGINT's disposition onto SIGTERM (dagster._utils.interrupts, "for k8s"); under
    `make test` launched that way, it added about four minutes. Handlers (not ignores) are reset
    by exec anyway."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    # _spawn blocks them around the fork, and a blocked mask survives exec too.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _spawn(cfg: Config, name: str, argv: list[str], env: dict[str, str] | None = None,
           cwd: Path = REPO) -> int:
    cfg.logs.mkdir(parents=True, exist_ok=True)
    cfg.pids.mkdir(parents=True, exist_ok=True)
    log = open(cfg.log(name), "ab")
    marker = f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}"
    if cfg.production:  # every line of the profile's logs is JSON; log_tail still finds "==== "
        import json

        marker = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": "info",
                             "logger": "aether.stack", "message": marker})
    log.write(f"\n{marker}\n".encode())
    log.flush()
    # A new session: Ctrl-C in the terminal reaches only the stack command, which then stops
    # each piece in order; `down` can signal the whole process group (uvicorn workers, the
    # Dagster code server and its runs).
    # Ctrl-C between the fork and the pid file left a server running that `down` could not find
    # (a clean-clone run interrupted a start there): the stop signals wait until it is recorded.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env={**os.environ, **(env or {})}, start_new_session=True,
                                preexec_fn=_default_stop_signals)
        _pidfile(cfg, name).write_text(str(proc.pid))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        log.close()
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
        " or set AETHER_PG_BIN to its bin directory, or set AETHER_EXTERNAL_DATABASE_URL to use your own server."
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
        say("postgres: AETHER_EXTERNAL_DATABASE_URL is set, using that server (none started)")
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
        opts = (f"-p {cfg.pg_port} -c listen_addresses=127.0.0.1 -k {sock} -c max_connections=200"
                " -c shared_buffers=256MB -c fsync=on")
        boot = log
        pg_files = [log]
        if cfg.production:
            opts += _pg_tls_options(cfg) + _pg_json_log_options(cfg)
            # pg_ctl's own file gets only what is said before the collector runs (its plain
            # "redirecting log output" line, a bind or config error): outside the JSON logs dir.
            boot, log = _pg_dir(cfg) / "boot.log", _pg_log(cfg)
            collector = _pg_dir(cfg) / "log"
            collector.mkdir(exist_ok=True)
            pg_files = [boot, collector / "postgres.json", collector / "postgres.log"]
            if not log.is_symlink():
                log.unlink(missing_ok=True)
                log.symlink_to(collector / "postgres.json")
        # pg_ctl and the collector write the server log as the postgres user: give them files it can write.
        for f in pg_files:
            f.touch()
            if os.geteuid() == 0:
                shutil.chown(f, "postgres", "postgres")
        if os.geteuid() == 0 and cfg.production:
            shutil.chown(_pg_dir(cfg) / "log", "postgres", "postgres")
        say(f"postgres: starting on 127.0.0.1:{cfg.pg_port} (log: {log})")
        r = subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "start", "-D", str(data), "-l", str(boot),
                                        "-o", opts, "-w", "-t", "60"]), capture_output=True, text=True)
        if r.returncode != 0:
            tails = log_tail(boot) + (log_tail(log) if log != boot else "")
            raise StackError(f"postgres: pg_ctl start failed ({r.stdout.strip()} {r.stderr.strip()}). "
                             f"Log: {log}{tails}")
    wait_until("postgres", "pg_isready", lambda: _pg_isready(cfg), 60, _pg_log(cfg))
    for db in ("crm", "dagster"):
        _create_database(cfg, db)


def _pg_log(cfg: Config) -> Path:
    """The server log: in the production profile the collector's JSON-lines file, reached from
    the logs dir through a symlink (see _pg_json_log_options)."""
    return cfg.logs / "postgres.json" if cfg.production else cfg.log("postgres")


def _pg_json_log_options(cfg: Config) -> str:
    # One JSON object per line, one file (no rotation). The collector always keeps a plain-text
    # catch-all beside it (log_filename; the .json file is named after it), where the postmaster
    # writes "ending log output to stderr" at each start: so the collector writes in pg/log,
    # beside pg_ctl's boot file, and the logs dir gets postgres.json as a symlink.
    return (f" -c logging_collector=on -c log_destination=jsonlog -c log_directory={_pg_dir(cfg) / 'log'}"
            " -c log_filename=postgres.log -c log_rotation_age=0 -c log_rotation_size=0")


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
    from aether_platform.db_url import redact

    return redact(url)


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
    rc = run_with_download_progress("kafka: fetching jars", [
        mvn, "-B", "-f", str(pom), "dependency:copy-dependencies", "-DincludeScope=runtime",
        f"-DoutputDirectory={tmp}"], log)
    if rc != 0:
        raise StackError(f"kafka: `mvn dependency:copy-dependencies` failed. Log: {log}{log_tail(log)}")
    (tmp / ".complete").write_text(kafka_version())
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


_MAVEN_DOWNLOADED = re.compile(r"Downloaded from \S+: (\S+) \(([\d.,]+) (B|kB|KB|MB|GB)")
_UNITS = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def maven_download(line: str) -> tuple[str, float] | None:
    """(file name, bytes) of a Maven "Downloaded from" line, else None."""
    m = _MAVEN_DOWNLOADED.search(line)
    if not m:
        return None
    return m.group(1).rsplit("/", 1)[-1], float(m.group(2).replace(",", "")) * _UNITS[m.group(3)]


def run_with_download_progress(label: str, argv: list[str], log: Path, report_every: float = 10.0) -> int:
    """Run Maven with its output in `log`, showing what it fetches: on a terminal a rich progress
    line (files, megabytes, the current file, elapsed time), elsewhere a plain line every few
    seconds. Maven knows no total before it resolves, so this is a counter, not a percentage."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stdout)
    files, size, last_report, t0 = 0, 0.0, time.monotonic(), time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace")
    try:
        with open(log, "w") as out, Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                              console=console, transient=True,
                                              disable=not console.is_terminal) as progress:
            task = progress.add_task(label)
            for line in proc.stdout:
                out.write(line)
                got = maven_download(line)
                if got is None:
                    continue
                files += 1
                size += got[1]
                status = f"{label}: {files} files, {size / 1e6:.1f} MB"
                progress.update(task, description=f"{status} ({got[0]})")
                if not console.is_terminal and time.monotonic() - last_report >= report_every:
                    say(f"{status} … {time.monotonic() - t0:.0f}s")
                    last_report = time.monotonic()
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: Maven must not keep writing into the cache
            proc.terminate()
            proc.wait()
    if files:
        say(f"{label}: {files} files, {size / 1e6:.1f} MB in {time.monotonic() - t0:.0f}s")
    return rc


def _java() -> str:
    java = shutil.which("java")
    if not java:
        raise StackError("kafka: Java 17 is needed. Debian: `apt-get install -y openjdk-17-jre-headless`.")
    return java


def _kafka_ready(cfg: Config) -> bool:
    from confluent_kafka.admin import AdminClient

    from aether_platform.kafka_client import silent_logger

    admin = AdminClient({**cfg.kafka_client_config(), "socket.timeout.ms": 2000,
                         "logger": silent_logger("aether.stack.kafka")})
    md = admin.list_topics(timeout=2)
    return bool(md.brokers)


def start_kafka(cfg: Config) -> None:
    from aether_platform.kafka_client import KafkaConfigError

    try:  # a half-configured client is one clear line now, not a readiness timeout later
        cfg.kafka_client_config()
    except KafkaConfigError as exc:
        raise StackError(f"kafka: {exc}") from None
    if cfg.external_kafka:
        say("kafka: AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS is set, using that cluster (none started)")
        wait_until("kafka", f"AdminClient metadata from {cfg.external_kafka}",
                   lambda: _kafka_ready(cfg), _external_wait(), None)
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
        format_args: list[str] = []
        if cfg.production:
            format_args = _kafka_production_properties(cfg, props)
        cp = f"{libs}/*"
        jvm = [_java(), "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={HERE / 'kafka' / _kafka_log_config(cfg)}",
               f"-Dkafka.logs.file={log}", "-cp", cp]
        if not (data / "meta.properties").exists():
            cluster_file = kdir / "cluster.id"
            if not cluster_file.exists():
                cluster_file.write_text(kafka_cluster_id())
            say("kafka: formatting KRaft storage")
            r = subprocess.run([*jvm, "kafka.tools.StorageTool", "format",
                                f"--cluster-id={cluster_file.read_text().strip()}",
                                "-c", str(props), "--ignore-formatted", *format_args], capture_output=True, text=True)
            if r.returncode != 0:
                raise StackError(f"kafka: storage format failed: {r.stdout.strip()} {r.stderr.strip()}")
        say(f"kafka: starting broker on {cfg.kafka_bootstrap} (log: {log})")
        _spawn(cfg, "kafka", [*jvm, "kafka.Kafka", str(props)])
    wait_until("kafka", f"AdminClient metadata from {cfg.kafka_bootstrap}", lambda: _kafka_ready(cfg),
               120, log, alive=lambda: running(cfg, "kafka"))


def _kafka_log_config(cfg: Config) -> str:
    # The production profile's logs are JSON lines (log4j-core's JsonLayout; Kafka's own jars
    # bring the jackson it needs); development keeps the readable pattern.
    return "log4j2-json.properties" if cfg.production else "log4j2.properties"


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


def _slo_retention() -> str:
    """The SLO period plus a margin: a 30-day budget needs 30 days of samples (slo_spec)."""
    from aether_platform.slo_spec import PROMETHEUS_RETENTION
    return PROMETHEUS_RETENTION


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
        if cfg.production:  # auth is on: /metrics needs the operator token
            with conf.open("a") as f:
                f.write(f"    authorization:\n      credentials_file: {secrets_dir(cfg) / 'operator.token'}\n")
        say(f"prometheus: starting on {url} (log: {log})")
        _spawn(cfg, "prometheus", [binary, f"--config.file={conf}", f"--storage.tsdb.path={pdir / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{cfg.prometheus_port}",
                                   "--web.enable-lifecycle", f"--storage.tsdb.retention.time={_slo_retention()}",
                                   *(["--log.format=json"] if cfg.production else [])])
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
        raise StackError(f"migrations: alembic upgrade head failed. Log: {log}{log_tail(log)}")
    say("migrations: at head")


def provision_topic(cfg: Config) -> None:
    from aether_platform.topics import declared_topic, ensure_topic

    spec = declared_topic()
    result = ensure_topic(cfg.kafka_client_config(), spec)
    say(f"kafka: topic {spec.name} {result.action} ({result.partitions} partitions)")


def _platform_env(cfg: Config) -> dict[str, str]:
    # kafka_env() in full: empty values override KAFKA_* a shell may have exported for another broker.
    return {**cfg.env(), **cfg.kafka_env(), "PYTHONPATH": str(REPO)}


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
        # Every worker signs the Command Center's sign-in cookie with the same key (api/security.py);
        # kept out of cfg.env(), which `stack env` prints.
        tickets = {"AETHER_AUTH_STREAM_TICKET_SECRET": _secret(cfg, "stream-ticket.secret")} if cfg.production else {}
        _spawn(cfg, "api", [sys.executable, "-m", "api", "--port", str(cfg.api_port), "--workers", str(cfg.api_workers)],
               env={**_platform_env(cfg), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **tickets})
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
    if _dagster_log_format(cfg):  # the code servers they spawn (`dagster api grpc`) read click's env var
        env["DAGSTER_CLI_API_GRPC_LOG_FORMAT"] = "json"
    workspace = str(REPO / "workspace.yaml")
    log = cfg.log("dagster-webserver")
    if running(cfg, "dagster-webserver"):
        say(f"dagster-webserver: already running on {cfg.dagster_url}")
    else:
        if _port_open(cfg.dagster_port):
            raise StackError(f"dagster-webserver: port {cfg.dagster_port} is taken; set AETHER_DAGSTER_PORT")
        say(f"dagster-webserver: starting on {cfg.dagster_url} (log: {log})")
        _spawn(cfg, "dagster-webserver", [*_dagster_cmd(cfg, "dagster-webserver", "dagster_webserver.cli"),
                                          "-h", "127.0.0.1", "-p", str(cfg.dagster_port),
                                          "-w", workspace, *_dagster_log_format(cfg)], env=env)
    if running(cfg, "dagster-daemon"):
        say("dagster-daemon: already running")
    else:
        say(f"dagster-daemon: starting (log: {cfg.log('dagster-daemon')})")
        _spawn(cfg, "dagster-daemon", [*_dagster_cmd(cfg, "dagster-daemon", "dagster._daemon.cli"), "run", "-w", workspace,
                                       *_dagster_log_format(cfg)],
               env=env)
    wait_until("dagster-webserver", f"GET {cfg.dagster_url}/server_info",
               lambda: _http_ok(f"{cfg.dagster_url}/server_info"), 240, log,
               alive=lambda: running(cfg, "dagster-webserver"))
    wait_until("dagster-daemon", "the daemon process to stay up", lambda: True, 5, cfg.log("dagster-daemon"),
               alive=lambda: running(cfg, "dagster-daemon"))


# --------------------------------------------------------------------------- production profile
#
# Everything the production profile adds, in one place: certificates, secrets, the servers' TLS
# and SASL settings, the platform's environment, and ports picked at start. Files live in the
# profile's state dir (git-ignored), made once and reused: tls/ (CA and server certificate for
# 127.0.0.1 and localhost), secrets/ (0600: Kafka passwords, the keystore password, the API token
# file of hashes and the operator token Prometheus scrapes with).

PLATFORM_KAFKA_USER = "aether"
_BROKER_KAFKA_USER = "broker"  # the broker's own SCRAM user, for its inter-broker listener


def tls_dir(cfg: Config) -> Path:
    return cfg.state_dir / "tls"


def secrets_dir(cfg: Config) -> Path:
    return cfg.state_dir / "secrets"


def production_kafka_env(cfg: Config) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": PLATFORM_KAFKA_USER,
        "KAFKA_SASL_PASSWORD_FILE": str(secrets_dir(cfg) / f"kafka-{PLATFORM_KAFKA_USER}.password"),
        "KAFKA_SSL_CA_LOCATION": str(tls_dir(cfg) / "ca.crt"),
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "https",
    }


def production_env(cfg: Config) -> dict[str, str]:
    """The platform processes' settings beyond the servers' URLs: auth on, JSON logs. OIDC
    (AETHER_AUTH_OIDC_*) passes through from the environment, or comes from the provider the
    profile started (oidc.json in the state dir)."""
    if not cfg.production:
        return {}
    env = {"AETHER_AUTH": "on", "AETHER_AUTH_TOKEN_FILE": str(secrets_dir(cfg) / "tokens"),
           "AETHER_LOG_FORMAT": "json"}
    oidc = cfg.state_dir / "oidc.json"
    if oidc.exists():
        import json

        env.update({k: v for k, v in json.loads(oidc.read_text()).items() if k.startswith("AETHER_AUTH_OIDC_")})
    return env


def start_oidc(cfg: Config) -> None:
    """The local OpenID Provider (devstack/oidc.py) whose tokens the API accepts beside the token
    file: one `operator` client, its secret in secrets/oidc-operator.secret. Left alone when OIDC
    is configured otherwise: AETHER_AUTH_OIDC_ISSUER in the environment, or an oidc.json written
    by someone else (the tests start a provider with clients of their own)."""
    import json

    info = cfg.state_dir / "oidc.json"
    owned = cfg.state_dir / "oidc" / ".started-by-stack"
    if os.environ.get("AETHER_AUTH_OIDC_ISSUER") or (info.exists() and not owned.exists()):
        say("oidc: configured outside the stack; none started")
        return
    if running(cfg, "oidc"):
        say("oidc: already running")
        return
    try:
        from devstack import oidc
    except ImportError:
        say("oidc: devstack/oidc.py is not here; tokens come from the token file only")
        return
    if not oidc.installed():
        raise StackError("oidc: the OpenID Provider is not installed; run `devstack/bootstrap.sh --oidc`")
    secret = _secret(cfg, "oidc-operator.secret")
    previous = json.loads(info.read_text()).get("port", 0) if info.exists() else 0
    provider = oidc.OidcProvider([{"client_id": "operator", "client_secret": secret, "role": "operator"}],
                                 port=previous)
    try:
        issuer, jwks_url = provider.start(cfg.state_dir / "oidc")
    except oidc.OidcProviderError as exc:
        raise StackError(f"oidc: {exc}") from None
    cfg.pids.mkdir(parents=True, exist_ok=True)
    _pidfile(cfg, "oidc").write_text(str(provider.proc.pid))
    owned.touch()
    info.write_text(json.dumps({"AETHER_AUTH_OIDC_ISSUER": issuer, "AETHER_AUTH_OIDC_AUDIENCE": provider.audience,
                                "AETHER_AUTH_OIDC_JWKS_URL": jwks_url, "port": provider.port}))
    say(f"oidc: OpenID Provider at {issuer} (client `operator`, secret in {secrets_dir(cfg) / 'oidc-operator.secret'})")


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        raise StackError("production profile: `openssl` is needed to make its certificates. Debian: `apt-get install -y openssl`.")
    r = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise StackError(f"production profile: openssl {args[0]} failed: {r.stderr.strip()}")


def ensure_tls(cfg: Config) -> None:
    """A CA and a server certificate signed by it, for 127.0.0.1 and localhost (what the clients
    verify with verify-full / https endpoint identification), plus the broker's PKCS#12 keystore."""
    d = tls_dir(cfg)
    if (d / "server.p12").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    say(f"tls: making a CA and a server certificate in {d}")
    days = "825"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", days,
             "-subj", "/CN=Aether local production-profile CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=d)
    (d / "server.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                                  "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", days, "-extfile", "server.ext", cwd=d)
    for key in ("ca.key", "server.key"):
        os.chmod(d / key, 0o600)
    _secret(cfg, "keystore.password")  # made here if missing; openssl reads it from the file
    _openssl("pkcs12", "-export", "-in", "server.crt", "-inkey", "server.key", "-certfile", "ca.crt",
             "-name", "kafka", "-out", "server.p12", "-passout", f"file:{secrets_dir(cfg) / 'keystore.password'}",
             cwd=d)


def _secret(cfg: Config, name: str) -> str:
    """A generated secret in secrets/ (0600), made on first use and reused afterwards."""
    import secrets

    d = secrets_dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    path = d / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def ensure_secrets(cfg: Config) -> None:
    """Kafka passwords, and the API's token file with one operator token (its clear value in
    operator.token, which Prometheus scrapes /metrics with). Tenant tokens: append lines made by
    `aether auth hash-token` to secrets/tokens; the API re-reads it on change."""
    from aether_platform.auth import OPERATOR, hash_token

    for user in (PLATFORM_KAFKA_USER, _BROKER_KAFKA_USER):
        _secret(cfg, f"kafka-{user}.password")
    tokens = secrets_dir(cfg) / "tokens"
    if not tokens.exists():
        operator = _secret(cfg, "operator.token")
        tokens.write_text(f"# API tokens of the production profile (hashes only; see `aether auth hash-token`)\n"
                          f"{hash_token(operator)} {OPERATOR} stack-operator\n")
        os.chmod(tokens, 0o600)


def prepare_production(cfg: Config) -> None:
    ensure_secrets(cfg)
    ensure_tls(cfg)


def _pg_tls_options(cfg: Config) -> str:
    """ssl=on with our certificate, and an hba file that refuses every TCP connection without TLS.
    PostgreSQL runs as `postgres` and wants its key private to itself: it gets its own copies."""
    pgtls = _pg_dir(cfg) / "tls"
    pgtls.mkdir(exist_ok=True)
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copyfile(tls_dir(cfg) / name, pgtls / name)
        os.chmod(pgtls / name, 0o600 if name.endswith(".key") else 0o644)
    hba = _pg_dir(cfg) / "pg_hba.production.conf"
    hba.write_text("# production profile: TCP only over TLS (clients verify the server: sslmode=verify-full)\n"
                   "local     all all              trust\n"
                   "hostssl   all all 127.0.0.1/32 trust\n"
                   "hostnossl all all 0.0.0.0/0    reject\n")
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", str(pgtls), str(hba)], check=True)
    return (f" -c ssl=on -c ssl_cert_file={pgtls / 'server.crt'} -c ssl_key_file={pgtls / 'server.key'}"
            f" -c ssl_min_protocol_version=TLSv1.2 -c hba_file={hba}")


def _kafka_production_properties(cfg: Config, props: Path) -> list[str]:
    """Rewrites the broker's properties for one SASL_SSL listener (SCRAM-SHA-512 over TLS) and
    returns the storage-format arguments that create its SCRAM users. The KRaft controller
    listener stays plaintext on loopback: SCRAM cannot authenticate it (KIP-554); a real cluster
    puts it on mTLS (docs/deploy.md)."""
    tls = tls_dir(cfg)
    text = props.read_text()
    text = text.replace(f"listeners=PLAINTEXT://127.0.0.1:{cfg.kafka_port}", f"listeners=SASL_SSL://127.0.0.1:{cfg.kafka_port}")
    text = text.replace("listener.security.protocol.map=PLAINTEXT:PLAINTEXT,", "listener.security.protocol.map=SASL_SSL:SASL_SSL,")
    text = text.replace("inter.broker.listener.name=PLAINTEXT", "inter.broker.listener.name=SASL_SSL")
    if "PLAINTEXT://" in text or "inter.broker.listener.name=SASL_SSL" not in text:
        raise StackError("kafka: server.properties.tmpl no longer has the listeners the production profile rewrites")
    broker_password = _secret(cfg, f"kafka-{_BROKER_KAFKA_USER}.password")
    text += (
        "\n# production profile (devstack/stack.py)\n"
        "sasl.enabled.mechanisms=SCRAM-SHA-512\n"
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512\n"
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule"
        f' required username="{_BROKER_KAFKA_USER}" password="{broker_password}";\n'
        "ssl.keystore.type=PKCS12\n"
        f"ssl.keystore.location={tls / 'server.p12'}\n"
        f"ssl.keystore.password={_secret(cfg, 'keystore.password')}\n"
        f"ssl.key.password={_secret(cfg, 'keystore.password')}\n"
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={tls / 'ca.crt'}\n"
        "ssl.endpoint.identification.algorithm=https\n"
        "ssl.enabled.protocols=TLSv1.3,TLSv1.2\n"
    )
    props.write_text(text)
    os.chmod(props, 0o600)
    return [f"--add-scram=SCRAM-SHA-512=[name={user},password={_secret(cfg, f'kafka-{user}.password')}]"
            for user in (PLATFORM_KAFKA_USER, _BROKER_KAFKA_USER)]


# Ports: with AETHER_*_PORT=0 the stack picks free ones at start (bind port 0, read it back) and, if
# a server then finds its port taken by another process meanwhile, picks again. The ports are kept
# in ports.json, so status/env/down and a restart of one server see the same ones.
_PORTS = {"postgres": ("pg_port",), "kafka": ("kafka_port", "kafka_controller_port"),
          "prometheus": ("prometheus_port",), "api": ("api_port",), "dagster-webserver": ("dagster_port",)}
_PORT_ENV = {"pg_port": "AETHER_PG_PORT", "kafka_port": "AETHER_KAFKA_PORT",
             "kafka_controller_port": "AETHER_KAFKA_CONTROLLER_PORT", "prometheus_port": "AETHER_PROMETHEUS_PORT",
             "api_port": "AETHER_API_PORT", "dagster_port": "AETHER_DAGSTER_PORT"}


def _ports_file(cfg: Config) -> Path:
    return cfg.state_dir / "ports.json"


def _load_ports(cfg: Config) -> None:
    import json

    try:
        saved = json.loads(_ports_file(cfg).read_text())
    except (OSError, ValueError):
        return
    # A port picked earlier holds unless the environment names another one.
    for attr, port in saved.items():
        if attr in _PORT_ENV and os.environ.get(_PORT_ENV[attr], "0") in ("", "0"):
            setattr(cfg, attr, int(port))


def _save_ports(cfg: Config, attrs: tuple[str, ...]) -> None:
    import json

    try:
        saved = json.loads(_ports_file(cfg).read_text())
    except (OSError, ValueError):
        saved = {}
    saved.update({a: getattr(cfg, a) for a in attrs})
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    _ports_file(cfg).write_text(json.dumps(saved))


def _bound_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_BIND_ERRORS = ("address already in use", "could not bind", "bindexception", "is taken")


def pick_ports(cfg: Config, services: tuple[str, ...]) -> None:
    """Give every auto port still unset a free one, before any server starts, so that each
    server's configuration can name the others' ports (Prometheus scrapes the API)."""
    picked = tuple(a for name in services for a in _PORTS.get(name, ()) if a in cfg.auto_ports and getattr(cfg, a) == 0)
    for attr in picked:
        setattr(cfg, attr, _bound_port())
    if picked:
        _save_ports(cfg, picked)


def _start_on_ports(cfg: Config, name: str, start: Callable[[Config], None], attempts: int = 5) -> None:
    auto = tuple(a for a in _PORTS.get(name, ()) if a in cfg.auto_ports)
    if not auto:
        start(cfg)
        return
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            for attr in auto:
                setattr(cfg, attr, _bound_port())
            _save_ports(cfg, auto)
        try:
            start(cfg)
            return
        except StackError as exc:
            log = _pg_log(cfg) if name == "postgres" else cfg.log(name)
            tail = _log_tail(log).lower() + str(exc).lower()
            if attempt == attempts or not any(e in tail for e in _BIND_ERRORS):
                raise
            say(f"{name}: its port was taken meanwhile; trying others")
            if name == "postgres":
                stop_postgres(cfg)
            else:
                _stop_group(cfg, name)


def _log_tail(log: Path, size: int = 8192) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------- commands


def up(cfg: Config, services: tuple[str, ...] = ALL) -> None:
    t0 = time.monotonic()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    _note_client_variables(cfg)
    if cfg.production:
        say(f"profile: production (state: {cfg.state_dir})")
        prepare_production(cfg)
    pick_ports(cfg, services)
    if cfg.production and "api" in services:
        start_oidc(cfg)
    if "postgres" in services:
        _start_on_ports(cfg, "postgres", start_postgres)
        migrate(cfg)
    if "kafka" in services:
        _start_on_ports(cfg, "kafka", start_kafka)
        provision_topic(cfg)
    if "prometheus" in services:
        _start_on_ports(cfg, "prometheus", start_prometheus)
    if "api" in services:
        _start_on_ports(cfg, "api", start_api)
    if "dagster-webserver" in services or "dagster-daemon" in services:
        _start_on_ports(cfg, "dagster-webserver", start_dagster)
    say(f"up in {time.monotonic() - t0:.1f}s")


def _note_client_variables(cfg: Config) -> None:
    """Before the explicit switches, DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS meant "use this
    server": say so when one names another server than the stack's, rather than ignore it silently."""
    for name, ours, switch in (("DATABASE_URL", cfg.database_url, "AETHER_EXTERNAL_DATABASE_URL"),
                               ("KAFKA_BOOTSTRAP_SERVERS", cfg.kafka_bootstrap, "AETHER_EXTERNAL_KAFKA_BOOTSTRAP_SERVERS")):
        theirs = os.environ.get(name)
        if theirs and theirs != ours and not os.environ.get(switch):
            say(f"note: {name} is set to {_redact(theirs)}, which the stack does not use; "
                f"to run against that server instead of starting one, set {switch}")


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
    if cfg.production and "api" in services:
        _stop_group(cfg, "oidc")  # the API's identity provider goes with it
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
    if cfg.production:
        lines += [("Operator token (file)", str(secrets_dir(cfg) / "operator.token"), "api"),
                  ("API token file", str(secrets_dir(cfg) / "tokens"), "api"),
                  ("CA certificate", str(tls_dir(cfg) / "ca.crt"), "postgres")]
    print()
    for label, url, svc in lines:
        if svc in services:
            print(f"  {label:<24} {url}")
    print(flush=True)


def foreground(cfg: Config, services: tuple[str, ...]) -> int:
    """`make run`: bring everything up, print the URLs, stop it all on Ctrl-C or SIGTERM.

    Ctrl-C works at any moment: during start-up it interrupts the step under way (a wait, a Maven
    fetch), and what has started is stopped; while running it ends the watch loop. Stopping itself
    is not interruptible, so that a second Ctrl-C cannot leave half the stack running."""
    stopping = False

    def _stop(signum, _frame):
        nonlocal stopping
        stopping = True

    def _interrupt(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        up(cfg, services)
    except StackError as exc:
        say(f"ERROR: {exc}")
        _stop_all(cfg)
        return 1
    except KeyboardInterrupt:
        print(flush=True)
        say("interrupted while starting; stopping what has started")
        _stop_all(cfg)
        return 130
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print_urls(cfg, services)
    say("running; press Ctrl-C to stop everything")
    watched = [s for s in services if s != "postgres"]
    while not stopping:
        time.sleep(0.5)
        dead = [s for s in watched if s in PLATFORM + INFRA and not _is_external(cfg, s) and not running(cfg, s)]
        if dead:
            for d in dead:
                say(f"ERROR: {d} exited. Log: {cfg.log(d)}{log_tail(cfg.log(d))}")
            break
    _stop_all(cfg)
    return 0 if stopping else 1


def _stop_all(cfg: Config) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    down(cfg)


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
