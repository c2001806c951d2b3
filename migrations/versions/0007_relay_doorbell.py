"""relay_status.doorbell: where the leading streaming relay listens for writers' wake-ups.

The leader publishes its doorbell's address and token here with each heartbeat and clears it
when it steps down; writers read it to ring the relay after a commit (aether_platform/doorbell.py).
A nullable column on a one-row table: no rewrite, no lock worth the name.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("relay_status", sa.Column("doorbell", pg.JSONB))


def downgrade() -> None:
    op.drop_column("relay_status", "doorbell")
