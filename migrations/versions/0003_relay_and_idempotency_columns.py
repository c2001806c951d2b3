"""Columns the relay and the idempotency layer need, the pending-event indexes and relay_status.

Existing outbox rows (written before this revision) get a fresh event id and use their tenant
as aggregate key, so the NOT NULL columns can be added to a populated table.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = pg.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.add_column("outbox_events", sa.Column("event_id", pg.UUID(as_uuid=True)))
    op.add_column("outbox_events", sa.Column("aggregate_type", sa.String(50)))
    op.add_column("outbox_events", sa.Column("aggregate_key", sa.String(200)))
    op.execute(
        "UPDATE outbox_events SET event_id = gen_random_uuid(), aggregate_type = 'unknown',"
        " aggregate_key = tenant_id::text WHERE event_id IS NULL"
    )
    op.alter_column("outbox_events", "event_id", nullable=False)
    op.alter_column("outbox_events", "aggregate_type", nullable=False)
    op.alter_column("outbox_events", "aggregate_key", nullable=False)
    op.create_unique_constraint("outbox_events_event_id_key", "outbox_events", ["event_id"])
    op.add_column("outbox_events", sa.Column("next_attempt_at", TZ))
    op.add_column("outbox_events", sa.Column("dead_lettered_at", TZ))
    op.add_column("outbox_events", sa.Column("traceparent", sa.String(55)))
    op.add_column("outbox_events", sa.Column("kafka_partition", sa.Integer))
    op.add_column("outbox_events", sa.Column("kafka_offset", sa.BigInteger))
    op.create_index(
        "ix_outbox_events_pending",
        "outbox_events",
        ["id"],
        postgresql_where=sa.text("published_at IS NULL AND dead_lettered_at IS NULL"),
    )
    op.create_index(
        "ix_outbox_events_unpublished_key",
        "outbox_events",
        ["aggregate_key", "id"],
        postgresql_where=sa.text("published_at IS NULL"),
    )

    op.add_column("idempotency_keys", sa.Column("request_fingerprint", sa.String(64)))
    op.add_column("idempotency_keys", sa.Column("response_headers", pg.JSONB))

    op.create_table(
        "relay_status",
        sa.Column("relay", sa.String(100), primary_key=True),
        sa.Column("heartbeat_at", TZ, nullable=False),
        sa.Column("run_id", sa.String(100)),
        sa.Column("mode", sa.String(20)),
        sa.Column("published_total", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("attempts_total", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("failures_total", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("dead_lettered_total", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.drop_table("relay_status")
    op.drop_column("idempotency_keys", "response_headers")
    op.drop_column("idempotency_keys", "request_fingerprint")
    op.drop_index("ix_outbox_events_unpublished_key", table_name="outbox_events")
    op.drop_index("ix_outbox_events_pending", table_name="outbox_events")
    for col in ("kafka_offset", "kafka_partition", "traceparent", "dead_lettered_at", "next_attempt_at"):
        op.drop_column("outbox_events", col)
    op.drop_constraint("outbox_events_event_id_key", "outbox_events", type_="unique")
    for col in ("aggregate_key", "aggregate_type", "event_id"):
        op.drop_column("outbox_events", col)
