"""The seed's (published_at, occurred_at) index keeps only published rows, so the claim cannot pick it.

The relay's "is an earlier row of this key blocked?" probe (aether_platform/relay.py, ELIGIBLE)
asks for unpublished rows of one key. The seed's index also held every unpublished row, under
NULL, so with statistics taken while nothing was pending (a quiet hour, then a burst) the planner
believed `published_at IS NULL` matched next to nothing and probed through this index: each
claimed row then read every pending row, and a 5,000-event backlog over 50,000 published rows
drained at 3,440 events/s instead of 59,600/s (measured; BENCHMARKS.md, "Outbox growth and
retention"). Once the index holds only published rows, no probe for unpublished ones can use it,
and the probe reads ix_outbox_events_unpublished_key by its key.

Everything that reads this index asks for published rows (retention's keyset walk over
published_at, its count past retention and its min(published_at)); the server proves they imply
the index's predicate, so their plans keep it. Writers also gain: a new row is NULL there and no
longer enters it.

The name is the seed's and stays (CONTRACT.md keeps the seed's index names); its definition
gains the predicate. Rebuilt CONCURRENTLY under a temporary name, then swapped, so a populated
outbox keeps taking writes; a run stopped halfway leaves at most the temporary index, which the
next run rebuilds.

Revision ID: 0008
Revises: 0007
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

NAME = "IX_outbox_events_published_occurred"
BUILDING = "ix_outbox_events_published_occurred_building"


def _rebuild(where: str) -> None:
    with op.get_context().autocommit_block():
        # An interrupted earlier run may have left an invalid (or a finished but unswapped) build.
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {BUILDING}")
        op.execute(f"CREATE INDEX CONCURRENTLY {BUILDING} ON outbox_events (published_at, occurred_at){where}")
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{NAME}"')
        op.execute(f'ALTER INDEX {BUILDING} RENAME TO "{NAME}"')


def upgrade() -> None:
    _rebuild(" WHERE published_at IS NOT NULL")


def downgrade() -> None:
    _rebuild("")
