"""What an idle streaming relay costs: CPU of the relay process and of its database session over
AETHER_BENCH_IDLE_SECONDS (default 60) with nothing to publish.

CPU time is read from /proc (utime + stime of the relay process and of the PostgreSQL backend
serving its session), so the figure is a count of CPU seconds actually spent, not a share of a
wall-clock window: it stays meaningful on a loaded machine, unlike the latency figures. The
broker's share (none: an idle relay sends Kafka nothing but librdkafka's own keep-alives) is
not attributable on a shared broker and is not counted.

The relay is started, leads, publishes one event (so it has been busy, as after real traffic),
and is measured from a few seconds later, when any busy-time polling has backed off.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg

from aether_platform import outbox
from aether_platform.db_url import libpq_url
from bench._relay_setup import REPO, bench_database, bench_topic
from bench.report import Figure, emit, progress

SECONDS = float(os.environ.get("AETHER_BENCH_IDLE_SECONDS", "60"))
GOAL_CORES = 0.02


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (fields 14 and 15): every thread's,
    including threads that have ended (librdkafka runs several)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_idle(seconds: float) -> tuple[float, float, float]:
    """(relay cores, database session cores, transactions per second in its database) over `seconds` idle."""
    with bench_database("aether_bench_idle") as dsn, bench_topic("aetherlink.events.idle") as (bootstrap, topic):
        env = {**os.environ, "DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "AETHER_TOPIC": topic,
               "PYTHONPATH": str(REPO)}
        relay = subprocess.Popen([sys.executable, "-m", "aether_platform.relay", "--mode", "streaming",
                                  "--run-id", "bench-idle"], cwd=REPO, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with psycopg.connect(libpq_url(dsn), autocommit=True) as conn:
                deadline = time.monotonic() + 30
                backend = None
                while backend is None:
                    if time.monotonic() > deadline or relay.poll() is not None:
                        raise SystemExit("the relay did not start")
                    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                       ("aether-relay:bench-idle",)).fetchone()
                    backend = row[0] if row else None
                    time.sleep(0.1)
                with conn.cursor() as cur:
                    outbox.write(cur, outbox.make_event("JobUpdated", "job", uuid.uuid4(), uuid.uuid4(),
                                                        {"Title": "idle probe", "Status": "Open"}))
                while conn.execute("SELECT count(*) FROM outbox_events WHERE published_at IS NULL").fetchone()[0]:
                    if time.monotonic() > deadline:
                        raise SystemExit("the relay did not publish")
                    time.sleep(0.1)
                time.sleep(5)
                try:
                    backend_cpu = lambda: cpu_seconds(backend)  # noqa: E731
                    backend_cpu()
                except OSError:  # the database runs as another user or elsewhere: count the relay only
                    backend_cpu = lambda: 0.0  # noqa: E731
                x0 = commits(conn)
                r0, b0, t0 = cpu_seconds(relay.pid), backend_cpu(), time.monotonic()
                progress(f"relay idle, measuring CPU for {seconds:.0f}s")
                time.sleep(seconds)
                r1, b1, t1 = cpu_seconds(relay.pid), backend_cpu(), time.monotonic()
                x1 = commits(conn)
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(30)
    return (r1 - r0) / (t1 - t0), (b1 - b0) / (t1 - t0), (x1 - x0) / (t1 - t0)


def commits(conn: psycopg.Connection) -> int:
    """Transactions committed in the bench database: the relay's claims, plus this probe's own."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def main() -> int:
    relay_cores, db_cores, xacts = measure_idle(SECONDS)
    total = relay_cores + db_cores
    emit("relay_idle", "Idle streaming relay: CPU with nothing to publish",
         "make bench  (or: python -m bench relay_idle)", [
             Figure("relay process CPU", relay_cores * 100, "% of a core"),
             Figure("its database session CPU", db_cores * 100, "% of a core"),
             Figure("idle relay CPU, process + session", total * 100, "% of a core",
                    goal=f"<= {GOAL_CORES * 100:.0f} %", met=total <= GOAL_CORES),
             Figure("database transactions while idle", xacts, "per s"),
         ],
         notes=f"CPU seconds from /proc over {SECONDS:.0f}s of an idle outbox, after one published event; "
               "a CPU-time count, so it holds on a loaded machine.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
