"""End to end: API request → PostgreSQL outbox → streaming relay → Kafka → SSE client, at 25 % of
the API capacity measured in the same round of make bench (bench.report.load_rates), and at a
fixed 500 events/s as an extra row. Latency of each job = its arrival on the SSE stream − the
moment its POST was due (open loop, so a stall is counted, not hidden), over every job.

Baseline in the same run, at the same rate: a bare produce → consume (relay_latency.
produce_consume_floor: a record produced and flushed at linger 0, read by a consumer configured
as the SSE hub's), timed the same way, from the record's due time to its arrival.

Every failure counts and fails the goals: a POST answered other than 202, a socket error, a
POST slower than 10 s, and a job accepted but never seen on the stream.

The broker is warmed up first (bench._relay_setup.warm_up_broker): the figure is the pipeline's
steady state, not a freshly started JVM's first minutes.

Env: AETHER_BENCH_SECONDS (default 15), AETHER_BENCH_BROKER_WARM_UP_SECONDS (default 30).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import uvloop
import orjson

from bench._relay_setup import REPO, bench_database, bench_topic, warm_up_broker
from bench import _api as bench_api
from bench._load import open_loop
from bench.relay_latency import pct, produce_consume_floor
from bench.report import Figure, emit, load_rates, progress
from devstack import stack

SECONDS = int(os.environ.get("AETHER_BENCH_SECONDS", 15))
WARM_UP_SECONDS = float(os.environ.get("AETHER_BENCH_BROKER_WARM_UP_SECONDS", 30))


class SseReader(threading.Thread):
    """Reads the stream on a raw socket and records when each job's event arrives."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        host, port, path = re.match(r"http://([^:]+):(\d+)(.*)", url).groups()
        self.sock = socket.create_connection((host, int(port)))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.arrivals: dict[str, float] = {}
        self.ready = threading.Event()
        self.stop = False

    def run(self) -> None:
        buf = b""
        self.sock.settimeout(0.5)
        while not self.stop:
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            if b"\nid: " in buf or b"\r\n\r\n" in buf:
                self.ready.set()
            for line in re.findall(rb"data: (\{.*?\})\n", buf):
                event = orjson.loads(line)
                self.arrivals.setdefault(event["key"], now)
            buf = buf[buf.rfind(b"\n") + 1:]


def post_at_rate(url: str, tenant: str, seconds: float, rate: float, errors: dict[str, int]) -> dict[str, float]:
    """Open-loop creates (bench._load): job id → the time its request was due; every other
    outcome is added to `errors` by kind."""
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()
    load = uvloop.run(open_loop(host, int(port), tenant, rate, seconds))
    for kind, n in load.errors.items():
        errors[kind] = errors.get(kind, 0) + n
    return load.due_of


def main() -> None:
    rates = load_rates()
    errors: dict[str, int] = {}
    rows = []
    with bench_database("aether_bench_e2e") as dsn, bench_topic("aetherlink.events.bench-e2e") as (bootstrap, topic):
        env = {**os.environ, "DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "AETHER_TOPIC": topic,
               "PYTHONPATH": str(REPO), "AETHER_WRITE_RATE_PER_TENANT": "0"}
        progress(f"warming the broker up: {WARM_UP_SECONDS:.0f}s of small produce requests and fetches")
        progress(f"  {warm_up_broker(bootstrap, topic, WARM_UP_SECONDS):,} produce requests")
        workers = stack.default_api_workers()
        progress(f"starting the API ({workers} workers, as the stack runs it) and a streaming relay")
        api, url = bench_api.start_api(env, "--workers", str(workers), "--log-level", "warning")
        relay = subprocess.Popen([sys.executable, "-m", "aether_platform.relay", "--mode", "streaming"], cwd=REPO,
                                 env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for label, rate, judged in rates:
                progress(f"{label}: baseline, bare produce → consume at {rate:,.0f}/s for {SECONDS}s")
                floor = produce_consume_floor(bootstrap, topic, int(rate * SECONDS), rate)
                tenant = str(uuid.uuid4())
                reader = SseReader(f"{url}/crm-events?tenant={tenant}")
                reader.start()
                if not reader.ready.wait(10):
                    raise SystemExit("the SSE stream did not open")
                progress(f"{label}: warm-up, then {rate:,.0f} POST/s for {SECONDS}s")
                post_at_rate(url, tenant, 2, rate, errors)
                time.sleep(1)
                due_of = post_at_rate(url, tenant, SECONDS, rate, errors)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not set(due_of) <= set(reader.arrivals):
                    time.sleep(0.2)
                reader.stop = True
                if relay.poll() is not None:
                    raise SystemExit("the relay exited during the run")
                latencies = sorted((reader.arrivals[j] - due) * 1000 for j, due in due_of.items()
                                   if j in reader.arrivals)
                missing = len(due_of) - len(latencies)
                errors["jobs accepted but never on the stream"] = \
                    errors.get("jobs accepted but never on the stream", 0) + missing
                rows.append((label, rate, judged, latencies, floor, len(due_of)))
        finally:
            for proc in (relay, api):
                bench_api.stop(proc, timeout=30)
    figures = []
    for label, rate, judged, latencies, floor, _n in rows:
        figures += [
            Figure(f"API → SSE p50, {label}", pct(latencies, 50) if latencies else float("nan"), "ms",
                   "bare produce → consume p50", pct(floor, 50),
                   **(dict(goal="<= 10x floor", at_most=10, on="ratio") if judged else {})),
            Figure(f"API → SSE p99, {label}", pct(latencies, 99) if latencies else float("nan"), "ms",
                   "bare produce → consume p99", pct(floor, 99),
                   **(dict(goal="<= 25x floor", at_most=25, on="ratio") if judged else {})),
        ]
    runs = "; ".join(f"{label}: {n:,} jobs at {rate:,.0f}/s" for label, rate, _j, _l, _f, n in rows)
    emit("e2e_latency", "End to end: API request to SSE client, streaming mode",
         "make bench  (or: python -m bench e2e_latency)", figures, errors=errors,
         notes=f"{runs}, {SECONDS}s each; latency from each POST's due time to its arrival on the stream, over "
               f"every job; API with {stack.default_api_workers()} uvicorn workers; one streaming relay; one SSE "
               f"client filtered to the rate's tenant; the broker warmed up for {WARM_UP_SECONDS:.0f}s first. "
               "Baseline: a bare produce → consume at the same rate, timed from each record's due time.")


if __name__ == "__main__":
    main()
