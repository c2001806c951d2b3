"""End to end: API request → PostgreSQL outbox → streaming relay → Kafka → SSE client, at a steady
500 events/s. Latency of each job = its arrival on the SSE stream − the moment its POST was due
(open loop, so a stall is counted, not hidden).

Baseline in the same run: the bare Kafka floor on this machine — one record produced and
acknowledged (acks=all, the relay's producer settings) at the same rate — which no path through
Kafka can beat.

The broker is warmed up first (bench._relay_setup.warm_up_broker): the figure is the pipeline's
steady state, not a freshly started JVM's first minutes.

Env: AETHER_BENCH_SECONDS (default 15), AETHER_BENCH_BROKER_WARM_UP_SECONDS (default 30).
"""
from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx
import uvloop
import orjson

from bench._relay_setup import REPO, bench_database, bench_topic, warm_up_broker
from bench.relay_latency import kafka_floor, pct
from bench.report import Figure, emit, progress
from devstack import stack

RATE = 500
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


async def post_at_rate(url: str, tenant: str, seconds: int) -> dict[str, float]:
    """Open-loop POSTs: returns job id → the time its request was due."""
    due_of: dict[str, float] = {}
    body = b'{"title":"latency probe","status":"Open"}'
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(50):
        pool.put_nowait(await asyncio.open_connection(host, int(port)))

    async def one(due: float) -> None:
        reader, writer = await pool.get()
        writer.write(b"POST /api/crm/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Tenant-Id: "
                     + tenant.encode() + b"\r\nIdempotency-Key: " + uuid.uuid4().hex.encode()
                     + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await reader.readuntil(b"\r\n\r\n")
        payload = await reader.readexactly(int(re.search(rb"(?i)content-length: (\d+)", head).group(1)))
        pool.put_nowait((reader, writer))
        if head.startswith(b"HTTP/1.1 202"):
            due_of[orjson.loads(payload)["id"]] = due

    start = time.monotonic() + 0.2
    tasks = []
    for i in range(RATE * seconds):
        due = start + i / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return due_of


def main() -> None:
    with bench_database("aether_bench_e2e") as dsn, bench_topic("aetherlink.events.bench-e2e") as (bootstrap, topic):
        env = {**os.environ, "DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "AETHER_TOPIC": topic,
               "PYTHONPATH": str(REPO), "AETHER_WRITE_RATE_PER_TENANT": "0"}
        progress(f"warming the broker up: {WARM_UP_SECONDS:.0f}s of small produce requests and fetches")
        progress(f"  {warm_up_broker(bootstrap, topic, WARM_UP_SECONDS):,} produce requests")
        progress(f"baseline: bare Kafka produce → ack at {RATE}/s")
        floor = kafka_floor(bootstrap, topic, RATE * 5)
        # Bound here and handed over (--fd): no other process can take the port meanwhile.
        sock = socket.create_server(("127.0.0.1", 0), backlog=2048)
        port = sock.getsockname()[1]
        workers = stack.default_api_workers()
        progress(f"starting the API ({workers} workers, as the stack runs it) and a streaming relay")
        api = subprocess.Popen([sys.executable, "-m", "api", "--fd", str(sock.fileno()), "--workers", str(workers),
                                "--log-level", "warning"],
                               cwd=REPO, env=env, start_new_session=True, pass_fds=(sock.fileno(),))
        sock.close()
        relay = subprocess.Popen([sys.executable, "-m", "aether_platform.relay", "--mode", "streaming"], cwd=REPO,
                                 env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(url + "/", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the API did not start")
                    time.sleep(0.2)
            tenant = str(uuid.uuid4())
            reader = SseReader(f"{url}/crm-events?tenant={tenant}")
            reader.start()
            reader.ready.wait(10)
            progress(f"warm-up, then {RATE} POST/s for {SECONDS}s")
            uvloop.run(post_at_rate(url, tenant, 2))
            time.sleep(1)
            due_of = uvloop.run(post_at_rate(url, tenant, SECONDS))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not set(due_of) <= set(reader.arrivals):
                time.sleep(0.2)
            reader.stop = True
        finally:
            for proc in (relay, api):
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
    latencies = sorted((reader.arrivals[j] - due) * 1000 for j, due in due_of.items() if j in reader.arrivals)
    missing = len(due_of) - len(latencies)
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    emit("e2e_latency", "End to end: API request to SSE client, streaming mode, 500 events/s",
         "make bench  (or: python -m bench e2e_latency)", [
             Figure("API → SSE latency p50", p50, "ms", "bare Kafka produce→ack p50 (relay producer settings)", pct(floor, 50)),
             Figure("API → SSE latency p99", p99, "ms", "bare Kafka produce→ack p99 (relay producer settings)", pct(floor, 99),
                    goal="<= 250 ms", met=p99 <= 250 and missing == 0),
             Figure("events accepted but not seen on the stream", missing, "events", goal="0", met=missing == 0),
         ],
         notes=f"{len(due_of)} jobs created at {RATE}/s for {SECONDS}s; API with {stack.default_api_workers()} uvicorn "
               "workers; one streaming "
               "relay (claims at most every 20 ms); one SSE client filtered to the bench tenant; the broker warmed up "
               f"for {WARM_UP_SECONDS:.0f}s first.")


if __name__ == "__main__":
    main()
