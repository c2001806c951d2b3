"""CRM aggregates (accounts, contacts, jobs) and their write path.

Every state change runs in ONE transaction that holds: the idempotency claim, the business row,
its outbox event and the idempotency record: `write_one_statement()` or `write()`. The commands
below (create, update, delete) return the inserts they need rather than running them, so both can
fold them with the idempotency record into one statement (data-modifying CTEs):
- a create reads nothing, so its claim joins that statement too: one autocommit statement, one
  network round trip, one implicit transaction (write_one_statement, run by whichever driver the
  caller passes: the API uses asyncpg for it);
- an update or delete must lock and read its row first: BEGIN, claim, command, then the folded
  inserts sent with the COMMIT, two round trips (write, on psycopg).
"""
from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Awaitable, Callable

import orjson
import psycopg
from psycopg import errors as pg_errors

from aether_platform import idempotency, outbox
from aether_platform.aggregates import AggregateSpec
from aether_platform.idempotency import IdempotentRequest, Verdict
from aether_platform.inserts import Insert, fold


class DomainError(Exception):
    status = 400
    title = "Bad Request"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    status = 404
    title = "Not Found"


class Conflict(DomainError):
    status = 409
    title = "Conflict"


class InvalidReference(DomainError):
    status = 422
    title = "Invalid reference"


def _jsonable(value):
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return outbox.iso_utc(value)
    return value


def to_resource(spec: AggregateSpec, row: dict) -> dict:
    """Database row → camelCase API resource."""
    out = {"id": str(row["id"]), "tenantId": str(row["tenant_id"])}
    for f in spec.fields:
        out[f.api] = _jsonable(row[f.column])
    out["createdAt"] = outbox.iso_utc(row["created_at"])
    out["updatedAt"] = outbox.iso_utc(row["updated_at"])
    out["version"] = row["version"]
    return out


def _event(spec: AggregateSpec, verb: str, row: dict, now: datetime, traceparent: str | None) -> outbox.OutboxEvent:
    fields = {f.payload: _jsonable(row[f.column]) for f in spec.fields if f.payload}
    return outbox.make_event(f"{spec.event_prefix}{verb}", spec.name, row["tenant_id"], row["id"], fields,
                             occurred_at=now, traceparent=traceparent)


# --------------------------------------------------------------------------- commands
# A command may read or lock what it needs on the write transaction, and returns the resource
# (or None) with the inserts still to run.

@dataclass(frozen=True)
class Command:
    run: Callable[[psycopg.AsyncConnection, datetime], Awaitable[tuple[dict | None, list[Insert]]]]
    reads: bool  # False: run() never touches the connection, so the write can be one statement


def create(spec: AggregateSpec, tenant_id: uuid.UUID, values: dict, traceparent: str | None = None) -> Command:
    async def run(conn, now):
        row = {"id": uuid.uuid4(), "tenant_id": tenant_id, **{f.column: values.get(f.column) for f in spec.fields},
               "created_at": now, "updated_at": now, "version": 1}
        insert = Insert(spec.table, spec.columns, tuple(row[c] for c in spec.columns))
        return to_resource(spec, row), [insert, outbox.insert_statement(_event(spec, "Created", row, now, traceparent))]

    return Command(run, reads=False)


def update(spec: AggregateSpec, tenant_id: uuid.UUID, aggregate_id: uuid.UUID, changes: dict,
           traceparent: str | None = None) -> Command:
    async def run(conn, now):
        sets = [f"{col} = %s" for col in changes] + ["updated_at = %s", "version = version + 1"]
        # The UPDATE locks the aggregate row before its event is inserted: a concurrent change of
        # the same aggregate waits here, so its event gets a later outbox id (per-key order).
        cur = await conn.execute(
            f"UPDATE {spec.table} SET {', '.join(sets)} WHERE id = %s AND tenant_id = %s"
            f" RETURNING {', '.join(spec.columns)}",
            [*changes.values(), now, aggregate_id, tenant_id])
        row = await _fetch_row(cur)
        if row is None:
            raise NotFound(f"No {spec.name} {aggregate_id} for this tenant.")
        return to_resource(spec, row), [outbox.insert_statement(_event(spec, "Updated", row, now, traceparent))]

    return Command(run, reads=True)


def delete(spec: AggregateSpec, tenant_id: uuid.UUID, aggregate_id: uuid.UUID, traceparent: str | None = None) -> Command:
    async def run(conn, now):
        cur = await conn.execute(f"DELETE FROM {spec.table} WHERE id = %s AND tenant_id = %s"
                                 f" RETURNING {', '.join(spec.columns)}", [aggregate_id, tenant_id])
        row = await _fetch_row(cur)
        if row is None:
            raise NotFound(f"No {spec.name} {aggregate_id} for this tenant.")
        return None, [outbox.insert_statement(_event(spec, "Deleted", row, now, traceparent))]

    return Command(run, reads=True)


async def _fetch_row(cur) -> dict | None:
    row = await cur.fetchone()
    if row is None:
        return None
    return dict(zip((d.name for d in cur.description), row))


# --------------------------------------------------------------------------- the write transaction


@dataclass(frozen=True)
class WriteResult:
    verdict: Verdict
    status_code: int
    body: bytes
    headers: dict[str, str]
    seconds: float = 0.0  # claim to commit: the SLO's "write latency"


async def write(conn: psycopg.AsyncConnection, req: IdempotentRequest, command: Command, status_code: int,
                location: Callable[[dict], str] | None = None) -> WriteResult:
    """Run `command` exactly once per idempotency key, atomically with its outbox event and record:
    BEGIN, the claim, the command, then its folded inserts sent with the COMMIT.

    `conn` is in autocommit mode, so the transaction is opened explicitly. A create may try
    write_one_statement() first; this path decides every case that one leaves open."""
    start = time.perf_counter()
    claimed = await idempotency.claim(conn, req)
    if claimed.verdict is not Verdict.EXECUTE:
        await conn.rollback()
        return WriteResult(claimed.verdict, claimed.status_code, claimed.body, claimed.headers)
    try:
        body, headers, inserts = await _execute(command, conn, req, status_code, location)
        sql, params = fold(inserts)
        async with conn.pipeline():
            await conn.execute(sql, params)
            await conn.commit()
    except pg_errors.ForeignKeyViolation as exc:
        await conn.rollback()
        if "is still referenced" in str(exc):
            raise Conflict("The resource is still referenced (e.g. an account with jobs or contacts).") from exc
        raise InvalidReference("accountId does not refer to an account of this tenant.") from exc
    except BaseException:
        await conn.rollback()
        raise
    return WriteResult(Verdict.EXECUTE, status_code, body, headers, time.perf_counter() - start)


# Runs one claimed statement (psycopg-style %s placeholders) as its own implicit transaction and
# returns its one boolean: True if the claim was clean and everything was written, False or
# None if nothing was written (the claim was not clean, or a constraint refused a row).
ClaimedStatement = Callable[[str, tuple], Awaitable["bool | None"]]


async def write_one_statement(execute: ClaimedStatement, req: IdempotentRequest, command: Command, status_code: int,
                              location: Callable[[dict], str] | None = None) -> WriteResult | None:
    """A create as ONE autocommit statement: the claim (idempotency.CLAIM_CTE) and the inserts
    guarded by it. One network round trip, one implicit transaction.

    None: nothing was written and the claim was not clean (lock held, record present, a racing
    commit on the record's unique index) or a constraint refused a row; the caller then runs
    write(), whose transaction decides: replay, 409, 422, or the constraint's answer."""
    if command.reads:
        raise ValueError("only a command that reads nothing fits in one statement")
    start = time.perf_counter()
    body, headers, inserts = await _execute(command, None, req, status_code, location)
    sql, params = fold(inserts, guard=idempotency.CLAIMED, head=idempotency.claim_cte(req),
                       tail=idempotency.CLAIM_RESULT)
    if not await execute(sql, params):
        return None
    return WriteResult(Verdict.EXECUTE, status_code, body, headers, time.perf_counter() - start)


async def _execute(command: Command, conn, req: IdempotentRequest, status_code: int, location):
    now = outbox.utc_now()
    resource, inserts = await command.run(conn, now)
    body = orjson.dumps(resource) if resource is not None else b""
    headers = {"content-type": "application/json"} if resource is not None else {}
    if location and resource is not None:
        headers["location"] = location(resource)
    return body, headers, [*inserts, idempotency.record_statement(req, now, status_code, body, headers)]


# --------------------------------------------------------------------------- reads


async def get(conn, spec: AggregateSpec, tenant_id: uuid.UUID, aggregate_id: uuid.UUID) -> dict:
    cur = await conn.execute(f"SELECT {', '.join(spec.columns)} FROM {spec.table} WHERE id = %s AND tenant_id = %s",
                             (aggregate_id, tenant_id))
    row = await _fetch_row(cur)
    if row is None:
        raise NotFound(f"No {spec.name} {aggregate_id} for this tenant.")
    return to_resource(spec, row)


def encode_cursor(created_at: datetime, aggregate_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{aggregate_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, ident = raw.split("|", 1)
        return datetime.fromisoformat(ts), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DomainError("cursor is not a cursor returned by this API.") from exc


async def list_page(conn, spec: AggregateSpec, tenant_id: uuid.UUID, filters: dict, limit: int,
                    cursor: str | None) -> tuple[list[dict], str | None]:
    """Newest first, keyset-paginated on (created_at, id): stable under concurrent inserts."""
    where = ["tenant_id = %s"]
    params: list = [tenant_id]
    for col, value in filters.items():
        if col not in spec.filters:
            raise DomainError(f"cannot filter {spec.table} by {col}")
        where.append(f"{col} = %s")
        params.append(value)
    if cursor:
        ts, ident = decode_cursor(cursor)
        where.append("(created_at, id) < (%s, %s)")
        params += [ts, ident]
    cur = await conn.execute(
        f"SELECT {', '.join(spec.columns)} FROM {spec.table} WHERE {' AND '.join(where)}"
        f" ORDER BY created_at DESC, id DESC LIMIT %s", [*params, limit + 1])
    names = [d.name for d in cur.description]
    rows = [dict(zip(names, r)) for r in await cur.fetchall()]
    next_cursor = encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else None
    return [to_resource(spec, r) for r in rows[:limit]], next_cursor
