"""Idempotency keys, after the IETF draft "The Idempotency-Key HTTP Header Field" and Stripe.

Guarantees and their mechanism:
- One execution per (tenant, key): the claim is a transaction-scoped advisory lock on a hash of
  (tenant, key). A second request arriving while the first is in flight cannot take it and gets
  409; the lock dies with the transaction, so a crashed request leaves no stuck key.
- The record commits with the business row and its outbox event, in the same transaction: a
  stored response always means the work happened, and work that happened always has its record.
- Replays are exact: status, body bytes and the relevant headers, plus `Idempotent-Replayed`.
- A reused key with another method, path or body is refused (422), by a SHA-256 fingerprint of
  method, path and canonical JSON body.
- Only successful executions are stored. Errors — validation, domain (404, 409) or 5xx — roll
  the transaction back with the claim, so the client may retry with the same key.
- Fast path: a write that needs no reads (a create) takes the claim inside its one statement
  (`CLAIM_CTE`); any doubt — a held lock, an existing record, a race on the unique index — falls
  back to the transactional claim(), which decides as above.
- Keys expire after a TTL (24 h by default). An expired record is deleted on reuse, inside the
  claiming transaction, and the request runs as new; a scheduled job sweeps the rest.
"""
from __future__ import annotations

import enum
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson

from aether_platform.inserts import Insert

MAX_KEY_LENGTH = 200  # the seed's column is VARCHAR(200)
# The key's grammar, written once: RFC 8941 sf-string characters (printable ASCII). The draft sends
# the key as a quoted sf-string and many clients send it bare: both are accepted, the quotes are
# not part of the key. A bare key may not contain a double quote, so that `"abc` is an error rather
# than a different key. An escape pair decodes to one character, so both forms hold 1-200.
_BARE_CHAR = r'[!#-~]'
_SF_UNIT = r'(?:[ !#-\[\]-~]|\\["\\])'
# The whole grammar as one regex: the API documents and enforces it on the header (api/deps.py).
KEY_PATTERN = rf'^(?:{_BARE_CHAR}{{1,{MAX_KEY_LENGTH}}}|"{_SF_UNIT}{{1,{MAX_KEY_LENGTH}}}")$'
_SF_STRING_BODY = re.compile(rf'^{_SF_UNIT}*$')
_BARE_KEY = re.compile(rf'^{_BARE_CHAR}+$')

# Headers that are part of the stored response and replayed verbatim.
REPLAYED_HEADERS = ("content-type", "location")


class IdempotencyKeyError(ValueError):
    """The Idempotency-Key header is missing or malformed (400)."""


def parse_key(raw: str | None) -> str:
    """The key a header carries, unquoted; IdempotencyKeyError names what is wrong with it."""
    if raw is None:
        raise IdempotencyKeyError("The Idempotency-Key header is required on POST, PATCH and DELETE.")
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        if not _SF_STRING_BODY.match(inner):
            raise IdempotencyKeyError("Idempotency-Key is not a valid structured-field string.")
        value = re.sub(r'\\(["\\])', r"\1", inner)
    elif not _BARE_KEY.match(value or "\x00"):
        raise IdempotencyKeyError("Idempotency-Key must be printable ASCII without spaces or control characters.")
    if not value:
        raise IdempotencyKeyError("Idempotency-Key must not be empty.")
    if len(value) > MAX_KEY_LENGTH:
        raise IdempotencyKeyError(f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters.")
    return value


def canonical_json(body: object) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def fingerprint(method: str, path: str, body: object) -> str:
    h = hashlib.sha256()
    h.update(method.upper().encode())
    h.update(b"\n")
    h.update(path.encode())
    h.update(b"\n")
    h.update(canonical_json(body) if body is not None else b"")
    return h.hexdigest()


def lock_id(tenant_id: uuid.UUID, key: str) -> int:
    """64-bit advisory-lock id for (tenant, key). A collision (2^-64) only causes a spurious 409."""
    digest = hashlib.blake2b(tenant_id.bytes + key.encode(), digest_size=8, person=b"aether-idem").digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class IdempotentRequest:
    tenant_id: uuid.UUID
    key: str
    method: str
    path: str
    fingerprint: str
    ttl: timedelta


class Verdict(enum.Enum):
    EXECUTE = "execute"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    status_code: int = 0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stored_method: str = ""
    stored_path: str = ""


_LOOKUP = (
    "SELECT request_method, request_path, request_fingerprint, status_code, response_body, response_headers,"
    " expires_at <= now() AS expired FROM idempotency_keys WHERE tenant_id = %s AND key = %s"
)
_DELETE_EXPIRED = "DELETE FROM idempotency_keys WHERE tenant_id = %s AND key = %s AND expires_at <= now()"
_RECORD_COLUMNS = ("tenant_id", "key", "request_path", "request_method", "status_code", "response_body", "created_at",
                   "expires_at", "request_fingerprint", "response_headers")
_RECORD_PLACEHOLDERS = ("%s",) * 9 + ("%s::jsonb",)

# The claim inside a one-statement write (see crm.write_one_statement): `claimed` yields a row only
# if the lock was free and no record exists. All of the statement shares one snapshot, so a record
# committed between that snapshot and the lock is not seen here; the record's unique index then
# refuses the insert, the whole statement rolls back, and the caller falls back to claim() below.
CLAIM_CTE = (
    "claim AS MATERIALIZED (SELECT pg_try_advisory_xact_lock(%s) AS locked,"
    " NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE tenant_id = %s AND key = %s) AS fresh),"
    " claimed AS MATERIALIZED (SELECT 1 FROM claim WHERE locked AND fresh)"
)
CLAIMED = "claimed"
CLAIM_RESULT = "SELECT locked AND fresh FROM claim"


def claim_cte(req: IdempotentRequest) -> tuple[str, tuple]:
    return CLAIM_CTE, (lock_id(req.tenant_id, req.key), req.tenant_id, req.key)


async def claim(conn, req: IdempotentRequest) -> Claim:
    """First statements of a write transaction: begin, take the key's lock and look up its record.

    All go in one pipeline (one network round trip); the connection is in autocommit mode, so the
    transaction is opened explicitly. The lookup runs after the lock in the
    same transaction, so a record committed by a request that has just released the lock is
    seen (READ COMMITTED takes a new snapshot per statement)."""
    async with conn.pipeline():
        await conn.execute("BEGIN")
        lock_cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_id(req.tenant_id, req.key),))
        row_cur = await conn.execute(_LOOKUP, (req.tenant_id, req.key))
    (locked,) = await lock_cur.fetchone()
    row = await row_cur.fetchone()
    if not locked:
        return Claim(Verdict.IN_FLIGHT)
    if row is None:
        return Claim(Verdict.EXECUTE)
    method, path, fp, status, body, headers, expired = row
    if expired:
        await conn.execute(_DELETE_EXPIRED, (req.tenant_id, req.key))
        return Claim(Verdict.EXECUTE)
    if (method, path, fp) != (req.method, req.path, req.fingerprint):
        return Claim(Verdict.MISMATCH, stored_method=method, stored_path=path)
    return Claim(Verdict.REPLAY, status_code=status, body=(body or "").encode(), headers=headers or {})


def record_statement(req: IdempotentRequest, now: datetime, status_code: int, body: bytes,
                     headers: dict[str, str]) -> Insert:
    """The record's insert; it commits with the business write."""
    stored = {k: v for k, v in headers.items() if k.lower() in REPLAYED_HEADERS}
    return Insert("idempotency_keys", _RECORD_COLUMNS,
                  (req.tenant_id, req.key, req.path, req.method, status_code, body.decode(), now, now + req.ttl,
                   req.fingerprint, orjson.dumps(stored).decode()), _RECORD_PLACEHOLDERS)

