"""The seed's two tables, with their exact column names, types and index names.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = pg.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("payload", pg.JSONB, nullable=False),
        sa.Column("occurred_at", TZ, nullable=False),
        sa.Column("published_at", TZ),
        sa.Column("retry_count", sa.Integer, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("IX_outbox_events_published_occurred", "outbox_events", ["published_at", "occurred_at"])
    op.create_index("IX_outbox_events_tenant", "outbox_events", ["tenant_id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("request_path", sa.String(500), nullable=False),
        sa.Column("request_method", sa.String(10), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response_body", sa.Text),
        sa.Column("created_at", TZ, server_default=sa.text("now()")),
        sa.Column("expires_at", TZ, nullable=False),
    )
    op.create_index("IX_idempotency_keys_tenant_key", "idempotency_keys", ["tenant_id", "key"], unique=True)
    op.create_index("IX_idempotency_keys_expires", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("outbox_events")
