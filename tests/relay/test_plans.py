"""The relay keeps to its index paths whatever the planner knew when it cached its statements.

A relay that starts on an empty outbox (a fresh deployment, a truncated table) prepares its claim
and its mark there, and the server may keep generic plans costed on that near-empty table until
autovacuum next analyzes it. Such plans scanned the whole table for every mark and walked the
whole unpublished-key index for every claimed row: a backlog then drained at a few hundred events
a second (aether_platform.relay.PLANNER_OPTIONS). Judged by the server's own counts of what the
relay read, not by time, so a slow machine cannot fail it and a fast one cannot hide it."""
from __future__ import annotations

import threading
import uuid

import psycopg

from aether_platform.db_url import libpq_url
from aether_platform.relay import SESSION_PREFIX, Relay, RelayConfig
from tests.conftest import drop_database, migrated_database, wait_for
from tests.relay.conftest import write_events

TRICKLE = 15      # one at a time: enough executions for the claim and the mark to be prepared and generic
KEYS, PER_KEY = 1000, 3


def _reads(conn: psycopg.Connection) -> tuple[int, int, int]:
    """Sequential scans of the outbox, the rows they read, and the unpublished-key index entries read."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(
        "SELECT t.seq_scan, t.seq_tup_read, i.idx_tup_read FROM pg_stat_user_tables t"
        " JOIN pg_stat_user_indexes i ON i.relid = t.relid AND i.indexrelname = 'ix_outbox_events_unpublished_key'"
        " WHERE t.relname = 'outbox_events'").fetchone()


def test_a_relay_that_planned_on_an_empty_outbox_drains_a_backlog_by_its_indexes(
        base_database_url, kafka_bootstrap, topic, tenant):
    # A database of its own, so that the server's counters are this relay's alone.
    name = f"aether_test_plans_{uuid.uuid4().hex[:8]}"
    url = migrated_database(base_database_url, name)
    relay = Relay(RelayConfig.from_env(dsn=url, bootstrap=kafka_bootstrap, topic=topic), mode="streaming")
    runner = threading.Thread(target=relay.run, daemon=True)
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            before = _reads(conn)  # the migrations' own
            runner.start()
            for i in range(TRICKLE):
                write_events(conn, tenant, [uuid.uuid4()], per_key=1)
                wait_for(f"trickle event {i + 1}", lambda: relay.totals.published == i + 1, 30)
            write_events(conn, tenant, [uuid.uuid4() for _ in range(KEYS)], per_key=PER_KEY)
            backlog = KEYS * PER_KEY
            wait_for("the backlog to drain", lambda: relay.totals.published == TRICKLE + backlog, 300)
            relay.stop()
            runner.join(30)
            # A backend reports its counters when it exits.
            wait_for("the relay's session to end", lambda: not conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND starts_with(application_name, %s)", (SESSION_PREFIX,)).fetchone()[0], 30)
            seq_scans, seq_rows, probed = (b - a for a, b in zip(before, _reads(conn)))
    finally:
        relay.stop()
        if runner.is_alive():  # not started if the test failed before: join() would hide why
            runner.join(30)
        drop_database(base_database_url, name)

    events = TRICKLE + backlog
    assert (seq_scans, seq_rows) == (0, 0), f"{seq_scans} sequential scans of the outbox read {seq_rows} rows"
    # Each claimed row's probe reads the earlier pending rows of its key (at most PER_KEY - 1 here)
    # and a few index entries of rows already published; walking the whole index would read
    # hundreds per row.
    assert probed <= 10 * events, f"{probed / events:.0f} unpublished-key index entries read per event"
