"""NOTIFY on outbox insert, so a streaming relay wakes within milliseconds of a commit.

A trigger rather than a NOTIFY in the API: every writer (API, scripts, COPY) is covered. It is
statement-level, so a multi-row insert or a COPY costs one notification, and PostgreSQL folds
identical notifications of one transaction into one; the payload is empty because the relay
reads the table, not the message.

Revision ID: 0004
Revises: 0003
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
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


def downgrade() -> None:
    op.execute("DROP TRIGGER outbox_events_notify ON outbox_events")
    op.execute("DROP FUNCTION outbox_events_notify()")
