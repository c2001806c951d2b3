"""The database schema as SQLAlchemy Core tables: the single description that the Alembic
migrations must agree with (tests/foundation/test_migrations.py autogenerates against it).

`outbox_events` and `idempotency_keys` keep the seed's columns and index names exactly;
everything after the seed columns was added for the relay and the idempotency layer.
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID

metadata = MetaData()

TZ = TIMESTAMP(timezone=True)

JOB_STATUSES = ("Open", "Scheduled", "InProgress", "Done", "Cancelled")

outbox_events = Table(
    "outbox_events",
    metadata,
    # Seed columns.
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("type", String(200), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("occurred_at", TZ, nullable=False),
    Column("published_at", TZ),
    Column("retry_count", Integer, server_default=text("0")),
    Column("last_error", Text),
    # Added: consumer-side dedup id, the Kafka key, retry scheduling and the dead-letter state.
    Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("aggregate_type", String(50), nullable=False),
    Column("aggregate_key", String(200), nullable=False),
    Column("next_attempt_at", TZ),
    Column("dead_lettered_at", TZ),
    Column("traceparent", String(55)),
    Column("kafka_partition", Integer),
    Column("kafka_offset", BigInteger),
    # The seed's index, made partial (migration 0008): holding unpublished rows under NULL, it let
    # the relay's "blocked?" probe read every pending row per claimed row when statistics were stale.
    Index("IX_outbox_events_published_occurred", "published_at", "occurred_at",
          postgresql_where=text("published_at IS NOT NULL")),
    Index("IX_outbox_events_tenant", "tenant_id"),
    # "Oldest pending first" is an index-only walk of this partial index; the seed's
    # (published_at, occurred_at) index would also have to skip every published row's NULL test.
    Index(
        "ix_outbox_events_pending",
        "id",
        postgresql_where=text("published_at IS NULL AND dead_lettered_at IS NULL"),
    ),
    # Per-key order: "is an earlier event of this key blocked?" must be cheap however long the
    # key's backlog, so only rows that can block are indexed (migration 0009).
    Index(
        "ix_outbox_events_blocked_key",
        "aggregate_key",
        "id",
        postgresql_where=text("published_at IS NULL AND (dead_lettered_at IS NOT NULL OR next_attempt_at IS NOT NULL)"),
    ),
    # Counting dead letters (/metrics, the relay's stats) must not scan the table (migration 0006).
    Index("ix_outbox_events_dead_lettered", "id", postgresql_where=text("dead_lettered_at IS NOT NULL")),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # Seed columns.
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("key", String(200), nullable=False),
    Column("request_path", String(500), nullable=False),
    Column("request_method", String(10), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response_body", Text),
    Column("created_at", TZ, server_default=text("now()")),
    Column("expires_at", TZ, nullable=False),
    # Added: SHA-256 of method, path and canonical JSON body; the headers replayed verbatim.
    Column("request_fingerprint", String(64)),
    Column("response_headers", JSONB),
    Index("IX_idempotency_keys_tenant_key", "tenant_id", "key", unique=True),
    Index("IX_idempotency_keys_expires", "expires_at"),
)


def _audit_columns() -> list[Column]:
    return [
        Column("created_at", TZ, nullable=False, server_default=text("now()")),
        Column("updated_at", TZ, nullable=False, server_default=text("now()")),
        # Bumped on every change; lets clients and consumers order an aggregate's states.
        Column("version", Integer, nullable=False, server_default=text("1")),
    ]


accounts = Table(
    "accounts",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("name", String(200), nullable=False),
    *_audit_columns(),
    Index("ix_accounts_tenant_created", "tenant_id", "created_at", "id"),
    # Target of the tenant-scoped foreign keys below.
    UniqueConstraint("id", "tenant_id", name="uq_accounts_id_tenant"),
)


def _tenant_account_fk(name: str) -> ForeignKeyConstraint:
    # (account_id, tenant_id) → accounts(id, tenant_id): the database itself refuses a row that
    # points at another tenant's account, whatever the API code does.
    return ForeignKeyConstraint(["account_id", "tenant_id"], ["accounts.id", "accounts.tenant_id"], name=name)

contacts = Table(
    "contacts",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("account_id", UUID(as_uuid=True)),
    Column("name", String(200), nullable=False),
    Column("email", String(320)),
    Column("phone", String(50)),
    *_audit_columns(),
    _tenant_account_fk("fk_contacts_account"),
    Index("ix_contacts_tenant_created", "tenant_id", "created_at", "id"),
    Index("ix_contacts_account", "account_id"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("account_id", UUID(as_uuid=True)),
    Column("title", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    *_audit_columns(),
    _tenant_account_fk("fk_jobs_account"),
    CheckConstraint(
        "status IN (" + ", ".join(f"'{s}'" for s in JOB_STATUSES) + ")", name="ck_jobs_status"
    ),
    Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
    Index("ix_jobs_account", "account_id"),
)

# One row per relay lane. The relay runs inside short-lived Dagster runs, so its liveness and
# its cumulative counters live here, where the API's /metrics can export them to Prometheus.
relay_status = Table(
    "relay_status",
    metadata,
    Column("relay", String(100), primary_key=True),
    Column("heartbeat_at", TZ, nullable=False),
    Column("run_id", String(100)),
    Column("mode", String(20)),
    Column("published_total", BigInteger, nullable=False, server_default=text("0")),
    Column("attempts_total", BigInteger, nullable=False, server_default=text("0")),
    Column("failures_total", BigInteger, nullable=False, server_default=text("0")),
    Column("dead_lettered_total", BigInteger, nullable=False, server_default=text("0")),
    # The leading streaming relay's doorbell (address, token, node), null when none listens.
    Column("doorbell", JSONB),
)
