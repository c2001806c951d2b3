"""Per-key order is checked against blocked rows only, so a hot key's backlog drains in linear time.

The relay may claim an event only if no earlier event of its key is blocked (dead-lettered, or
waiting out a retry backoff): aether_platform/relay.py, ELIGIBLE. That probe read
ix_outbox_events_unpublished_key, which holds every pending row, and so walked all earlier
pending rows of the candidate's key: a backlog on one hot key cost O(n²). Measured with the
relay's own claim and mark, 5,000 pending events: 1,091 events/s on one key against 56,974/s on
5,000 keys. Indexing only the rows that can block (a handful, unless Kafka is refusing every
write) makes the probe O(log n) whatever the key's backlog: 54,564/s on one key, 58,611/s on
5,000 (same run).

ix_outbox_events_unpublished_key had no other reader, so it goes: every write paid for it, while
a new row never enters the blocked index (next_attempt_at and dead_lettered_at start NULL).

Built and dropped CONCURRENTLY: a populated outbox keeps taking writes.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BLOCKED = "published_at IS NULL AND (dead_lettered_at IS NOT NULL OR next_attempt_at IS NOT NULL)"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_outbox_events_blocked_key", "outbox_events", ["aggregate_key", "id"],
                        postgresql_where=sa.text(BLOCKED), postgresql_concurrently=True, if_not_exists=True)
        op.drop_index("ix_outbox_events_unpublished_key", table_name="outbox_events", postgresql_concurrently=True,
                      if_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_outbox_events_unpublished_key", "outbox_events", ["aggregate_key", "id"],
                        postgresql_where=sa.text("published_at IS NULL"), postgresql_concurrently=True,
                        if_not_exists=True)
        op.drop_index("ix_outbox_events_blocked_key", table_name="outbox_events", postgresql_concurrently=True,
                      if_exists=True)
