"""The benchmarks' one open-loop load generator: POST /api/crm/jobs at a fixed rate.

Open loop: request i is due at start + i/rate whether or not earlier answers came back, and its
latency counts from that due time, so a stall is counted instead of hidden (a closed loop would
just send less). It runs on uvloop beside the API on the same cores, so its own lag counts as
latency too. Every outcome is kept: the 202s with their due time, latency and job id, and every
other answer, socket error and timeout counted by kind (ERROR_KINDS), for the goals to gate on.
"""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property

import orjson

CLIENTS = 50  # connections, as wrk and pgbench use
REQUEST_TIMEOUT = 10.0  # an answer slower than this is an error, never a latency left out
ERROR_KINDS = ("non-202 answers", "socket errors", "timeouts", "exceptions")
BODY = b'{"title":"Replace boiler valve","status":"Open"}'


@dataclass
class Accepted:
    due: float  # time.monotonic() when the request was due
    latency: float  # seconds from due to the answer
    job_id: str


@dataclass
class LoadResult:
    accepted: list[Accepted] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))

    @cached_property  # read once the load has ended
    def due_of(self) -> dict[str, float]:
        return {a.job_id: a.due for a in self.accepted}


def _request(tenant: bytes) -> bytes:
    return (b"POST /api/crm/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Tenant-Id: " + tenant
            + b"\r\nIdempotency-Key: " + uuid.uuid4().hex.encode()
            + b"\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


async def exchange(reader, writer, tenant: bytes) -> tuple[bytes, bytes]:
    """One create on a kept-alive connection: the answer's head and body."""
    writer.write(_request(tenant))
    head = await reader.readuntil(b"\r\n\r\n")
    body = await reader.readexactly(int(re.search(rb"(?i)content-length: (\d+)", head).group(1)))
    return head, body


async def open_loop(host: str, port: int, tenant: str, rate: float, seconds: float) -> LoadResult:
    """`rate` creates/s for `seconds` over CLIENTS kept-alive connections (run it with uvloop.run)."""
    result, tenant_b = LoadResult(), tenant.encode()
    errors = result.errors
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(CLIENTS):
        pool.put_nowait(await asyncio.open_connection(host, port))

    async def one(due: float) -> None:
        try:
            # A connection that could not be replaced shrinks the pool; waiting for one is part
            # of the request's time, bounded like the rest of it.
            reader, writer = await asyncio.wait_for(pool.get(), REQUEST_TIMEOUT)
        except (TimeoutError, asyncio.TimeoutError):
            errors["timeouts"] += 1
            return
        try:
            head, body = await asyncio.wait_for(exchange(reader, writer, tenant_b), REQUEST_TIMEOUT)
        except (TimeoutError, asyncio.TimeoutError):
            errors["timeouts"] += 1
        except (OSError, asyncio.IncompleteReadError, AttributeError, ValueError):
            errors["socket errors"] += 1
        else:
            pool.put_nowait((reader, writer))
            if head.startswith(b"HTTP/1.1 202"):
                result.accepted.append(Accepted(due, time.monotonic() - due, orjson.loads(body)["id"]))
            else:
                errors["non-202 answers"] += 1
            return
        writer.close()  # in an unknown state: replace it
        try:
            pool.put_nowait(await asyncio.open_connection(host, port))
        except OSError:
            errors["socket errors"] += 1

    tasks: set[asyncio.Task] = set()  # only the unfinished: a 30-minute soak is ~10^6 requests

    def finished(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            errors["exceptions"] += 1  # anything one() did not expect is still an error, never lost

    start = time.monotonic() + 0.2
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(finished)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)  # counted by finished()
    for _ in range(pool.qsize()):
        pool.get_nowait()[1].close()
    return result
