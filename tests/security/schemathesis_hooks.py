"""Schemathesis hooks that make generated requests follow the API's contract, loaded by the run
in tests/security/test_fuzz.py through SCHEMATHESIS_HOOKS.

- Idempotency-Key: the contract is one key per distinct request; a key reused with another body
  is rightly a 422. Generators repeat small values ("0", "a") across cases, so every request the
  fuzzer means to be valid gets a fresh key. A key the fuzzer made invalid on purpose (a negative
  case) is left as it is.
- cursor: opaque, valid only as returned in a list's nextCursor; a syntactically valid string
  of the fuzzer's own is rightly a 400. A valid case's cursor is replaced by one taken from a real
  list response (the stateful phase follows each list's next_page link, which passes them on), or
  dropped if none has been seen yet.
- accountId: must name an account of the request's tenant; another id is rightly a 422 ("Invalid
  reference"). A valid case's accountId becomes an account this tenant created earlier in the run,
  or null (no account) when it has none.
"""
from __future__ import annotations

import json
import uuid

import schemathesis
from schemathesis import GenerationMode

CURSORS: set[str] = set()
ACCOUNTS: dict[str, list[str]] = {}  # tenant -> ids of the accounts it created


def _valid(case) -> bool:
    return case.meta is None or case.meta.generation.mode is GenerationMode.POSITIVE


@schemathesis.hook
def before_call(context, case, kwargs):
    if not _valid(case):
        return
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4()}"
    body = case.body if isinstance(case.body, dict) else None
    if body and body.get("accountId") is not None:
        known = ACCOUNTS.get(str((case.headers or {}).get("X-Tenant-Id")), [])
        if body["accountId"] not in known:
            body["accountId"] = known[-1] if known else None
    if case.query and "cursor" in case.query and case.query["cursor"] not in CURSORS:
        if CURSORS:
            case.query["cursor"] = next(iter(CURSORS))
        else:
            del case.query["cursor"]


@schemathesis.hook
def after_call(context, case, response):
    if case.method == "POST" and case.path == "/api/crm/accounts" and response.status_code == 202:
        ACCOUNTS.setdefault(str(case.headers.get("X-Tenant-Id")), []).append(json.loads(response.content)["id"])
    if case.method == "GET" and response.status_code == 200 and "cursor" in {
            p.name for p in case.operation.query}:
        try:
            cursor = json.loads(response.content).get("nextCursor")
        except (ValueError, AttributeError):
            return
        if cursor:
            CURSORS.add(cursor)
