"""The CRM's aggregates (accounts, contacts, jobs), described once.

Everything that differs between aggregates is here: table, event names, which fields the API
shows and which the event carries. The rest derives from AGGREGATES: the event types and the
payload's id field (aether_platform.outbox), the write path (aether_platform.crm), and in the API
the routers, the page schemas and the metric labels. Adding an aggregate is an entry here, its
request and response models in api/schemas.py (MODELS), and its table in a migration.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

@dataclass(frozen=True)
class FieldSpec:
    column: str
    api: str  # camelCase name in the HTTP API
    payload: str | None  # PascalCase name in the event payload; None keeps it out of the event


@dataclass(frozen=True)
class AggregateSpec:
    name: str  # aggregate type, as stored in outbox_events.aggregate_type
    table: str
    event_prefix: str  # "Job" → JobCreated, JobUpdated, JobDeleted
    fields: tuple[FieldSpec, ...]
    filters: tuple[str, ...] = ()  # columns a list may be filtered by (exact match)

    @property
    def id_field(self) -> str:
        """The payload's id field, as in the seed: {"Type","TenantId","JobId",...}."""
        return f"{self.event_prefix}Id"

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(f"{self.event_prefix}{verb}" for verb in ("Created", "Updated", "Deleted"))

    @functools.cached_property  # read on every write
    def columns(self) -> tuple[str, ...]:
        return ("id", "tenant_id", *(f.column for f in self.fields), "created_at", "updated_at", "version")


# Payload fields follow the seed: jobs are {"Type","TenantId","JobId","Title","Status","Ts"}.
JOB = AggregateSpec("job", "jobs", "Job", (
    FieldSpec("account_id", "accountId", None),
    FieldSpec("title", "title", "Title"),
    FieldSpec("status", "status", "Status"),
), filters=("status", "account_id"))

ACCOUNT = AggregateSpec("account", "accounts", "Account", (
    FieldSpec("name", "name", "Name"),
))

CONTACT = AggregateSpec("contact", "contacts", "Contact", (
    FieldSpec("account_id", "accountId", "AccountId"),
    FieldSpec("name", "name", "Name"),
    FieldSpec("email", "email", "Email"),
    FieldSpec("phone", "phone", "Phone"),
), filters=("account_id",))

AGGREGATES = (ACCOUNT, CONTACT, JOB)
EVENT_TYPES = tuple(t for a in AGGREGATES for t in a.event_types)
ID_FIELD = {a.name: a.id_field for a in AGGREGATES}
