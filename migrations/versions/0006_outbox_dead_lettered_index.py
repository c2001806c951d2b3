"""A partial index on dead-lettered outbox rows, so counting them does not scan the table.

/metrics counts dead-lettered events on every scrape, and the relay and the Dagster checks on
every observation (aether_platform/outbox_stats.py). Without an index that is a sequential scan of outbox_events, which retention bounds but does not make small (7
days at 500 events/s is 300 million rows): 572 ms at 1 million rows (bench/outbox_growth.py),
past the scrape's 500 ms statement timeout, so the gauge vanished from about a million rows on
while each scrape still spent the time.
Dead letters are rare, so the index is nearly empty and costs writers nothing: a row enters it
only when the relay dead-letters it.

Built CONCURRENTLY: a populated outbox keeps taking writes while it builds.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_outbox_events_dead_lettered", "outbox_events", ["id"],
                        postgresql_where=sa.text("dead_lettered_at IS NOT NULL"), postgresql_concurrently=True,
                        if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_outbox_events_dead_lettered", table_name="outbox_events", postgresql_concurrently=True,
                      if_exists=True)
