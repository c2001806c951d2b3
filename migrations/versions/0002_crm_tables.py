"""CRM tables: accounts, contacts, jobs, each scoped by tenant.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = pg.TIMESTAMP(timezone=True)
JOB_STATUSES = ("Open", "Scheduled", "InProgress", "Done", "Cancelled")


def _audit():
    return [
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1")),
    ]


def _tenant_fk(name: str) -> sa.ForeignKeyConstraint:
    # A row may only point at an account of its own tenant: enforced by the database.
    return sa.ForeignKeyConstraint(["account_id", "tenant_id"], ["accounts.id", "accounts.tenant_id"], name=name)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        *_audit(),
        sa.UniqueConstraint("id", "tenant_id", name="uq_accounts_id_tenant"),
    )
    op.create_index("ix_accounts_tenant_created", "accounts", ["tenant_id", "created_at", "id"])

    op.create_table(
        "contacts",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("account_id", pg.UUID(as_uuid=True)),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("phone", sa.String(50)),
        *_audit(),
        _tenant_fk("fk_contacts_account"),
    )
    op.create_index("ix_contacts_tenant_created", "contacts", ["tenant_id", "created_at", "id"])
    op.create_index("ix_contacts_account", "contacts", ["account_id"])

    op.create_table(
        "jobs",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("account_id", pg.UUID(as_uuid=True)),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        *_audit(),
        _tenant_fk("fk_jobs_account"),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in JOB_STATUSES) + ")", name="ck_jobs_status"
        ),
    )
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant_id", "created_at", "id"])
    op.create_index("ix_jobs_account", "jobs", ["account_id"])


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("contacts")
    op.drop_table("accounts")
