"""Drop the NOTIFY-on-insert trigger of 0004: it serialized every write's commit.

PostgreSQL takes one database-wide lock at commit for any transaction that issued a NOTIFY, and
holds it through the commit's WAL flush (async.c, PreCommit_Notify), so concurrent writers
commit one after another instead of sharing WAL flushes. Measured on the endpoint's own write
(pgbench, 50 clients, 2 cores): 1,561 TPS with the trigger, 2,357 without, and under a steady
500 writes/s the queue behind that lock (pg_stat_activity: 30-45 backends in `Lock:object`)
stalled requests for up to half a second whenever one WAL flush was slow.

A streaming relay now polls while idle (every AETHER_RELAY_IDLE_POLL_SECONDS),
which costs the database a few hundred microseconds per poll and no lock at all.

Revision ID: 0005
Revises: 0004
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_events_notify ON outbox_events")
    op.execute("DROP FUNCTION IF EXISTS outbox_events_notify()")


def downgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION outbox_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('outbox_events', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify()"
    )
