"""Rings the outbox relay's doorbell after each committed write, so the leading relay claims the
event at once instead of at its next poll (aether_platform/doorbell.py says why, and what a ring
does and cannot do). A background task re-reads where the leader listens every REFRESH_SECONDS,
from relay_status; a write only sends one datagram, and never waits on anything."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from aether_platform.doorbell import LOOKUP_SQL, Ringer
from aether_platform.relay import RELAY_NAME
from api.db import checkout

log = logging.getLogger("aether.api.doorbell")

# A new leader is rung at most this long after it first beats; until then the poll serves it.
REFRESH_SECONDS = 1.0


async def start(app) -> None:
    app.state.ringer = Ringer()
    app.state.doorbell_task = asyncio.create_task(_follow(app), name="relay-doorbell")


async def stop(app) -> None:
    app.state.doorbell_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app.state.doorbell_task
    app.state.ringer.close()


async def _follow(app) -> None:
    ringer: Ringer = app.state.ringer
    while True:
        try:
            async with checkout(app.state.pool) as conn:
                row = await (await conn.execute(LOOKUP_SQL, (RELAY_NAME,))).fetchone()
            # aim() may resolve a host name: never on the event loop.
            await asyncio.to_thread(ringer.aim, row[0] if row else None)
        except Exception as exc:  # the database is away: keep the last aim; writes fail anyway
            log.debug("relay doorbell lookup failed: %r", exc)
        await asyncio.sleep(REFRESH_SECONDS)
