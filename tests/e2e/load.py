"""Bounded, open-loop write load on loopback: request i is due at start + i/rate, whatever the
answers before it did. Stops by itself after `seconds`."""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson


@dataclass
class LoadResult:
    sent: int = 0
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> tenant
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # connection-level failures (no HTTP answer)
    refused_at: list[float] = field(default_factory=list)  # monotonic times of non-202 answers
    # (sent, answered, status or 0 for no answer), monotonic times, one per attempt
    attempts: list[tuple[float, float, int]] = field(default_factory=list)

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    def during(self, start: float, end: float) -> Counter:
        """Statuses of the attempts both sent and answered in [start, end): what a fault window
        really got, neither what came before it nor what it held until after."""
        return Counter(status for sent, answered, status in self.attempts if start <= sent and answered < end)


async def _post(base: str, tenant: str, body: bytes, key: str, timeout: float) -> tuple[int, bytes]:
    u = urlsplit(base)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(u.hostname, u.port), timeout)
    try:
        writer.write(b"POST /api/crm/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nX-Tenant-Id: " + tenant.encode() +
                     b"\r\nIdempotency-Key: " + key.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        payload = await asyncio.wait_for(reader.readexactly(length), timeout)
        return int(head.split(b" ", 2)[1]), payload
    finally:
        writer.close()


async def _run(base: str, tenants: list[str], rate: float, seconds: float, result: LoadResult,
               retry_until_accepted: bool) -> None:
    async def one(i: int) -> None:
        tenant = tenants[i % len(tenants)]
        key = f"load-{uuid.uuid4()}"
        body = orjson.dumps({"title": f"load {i}", "status": "Open"})
        while True:
            sent_at = time.monotonic()
            try:
                status, payload = await _post(base, tenant, body, key, 10)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                result.errors += 1
                status, payload = 0, b""
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.attempts.append((sent_at, time.monotonic(), status))
            if status != 202:
                result.refused_at.append(time.monotonic())
            if status == 202:
                result.accepted[orjson.loads(payload)["id"]] = tenant
                return
            # A client that follows the contract retries 503s, 409s and network errors with the same key.
            if not retry_until_accepted or status in (400, 422):
                return
            await asyncio.sleep(0.5)

    start = time.perf_counter()
    tasks = []
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        result.sent += 1
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


def run_load(base: str, tenants: list[str], rate: float, seconds: float, retry_until_accepted: bool = False,
             result: LoadResult | None = None) -> LoadResult:
    result = result or LoadResult()
    asyncio.run(_run(base, tenants, rate, seconds, result, retry_until_accepted))
    return result
