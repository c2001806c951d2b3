"""Expiry of idempotency keys: deletes expired rows in bounded batches, so that a large backlog
never holds one long transaction (or many row locks) against the API's inserts."""
from __future__ import annotations

from dataclasses import dataclass

import psycopg

# SKIP LOCKED: a key that a request is replaying or writing right now is left for the next run.
DELETE_BATCH_SQL = """
    DELETE FROM idempotency_keys WHERE id IN (
        SELECT id FROM idempotency_keys WHERE expires_at <= now() ORDER BY expires_at LIMIT %s
        FOR UPDATE SKIP LOCKED)
"""


@dataclass(frozen=True)
class ExpiryResult:
    deleted: int
    remaining: int
    remaining_expired: int
    batches: int


def expire_keys(conn: psycopg.Connection, batch_size: int = 5000, max_batches: int = 200) -> ExpiryResult:
    """Delete expired keys, one committed batch at a time, until none is left or max_batches ran."""
    deleted = batches = 0
    while batches < max_batches:
        with conn.transaction():
            n = conn.execute(DELETE_BATCH_SQL, (batch_size,)).rowcount
        batches += 1
        deleted += n
        if n < batch_size:
            break
    remaining, remaining_expired = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE expires_at <= now()) FROM idempotency_keys").fetchone()
    return ExpiryResult(deleted=deleted, remaining=remaining, remaining_expired=remaining_expired, batches=batches)
