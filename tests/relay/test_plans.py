"""The relay keeps to its index paths whatever the planner knew when it cached its statements.

Two ways a relay's plans have gone wrong, each measured once as a backlog draining at a few
thousand events a second or less, against tens of thousands:
- A relay that starts on an empty outbox (a fresh deployment, a truncated table) prepares its
  claim and its mark there, and the server may keep generic plans costed on that near-empty table
  until autovacuum next analyzes it. Such plans scanned the whole table for every mark and walked
  a whole index for every claimed row (aether_platform.relay.PLANNER_OPTIONS); a mark planned for
  a large batch on a small table merge-joined with a walk of the whole primary key.
- Statistics taken while nothing was pending (a quiet hour, then a burst) made the planner probe
  "is an earlier row of this key blocked?" through the seed's published_at index, reading every
  pending row for each claimed one, until that index became partial (migration 0008).
- That probe read every earlier pending row of the candidate's key, so one hot key's backlog
  drained in quadratic time, until only rows that can block were indexed (migration 0009).
Judged by the server's own counts of what the relay read, not by time, so a slow machine cannot
fail them and a fast one cannot hide them."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import psycopg

from aether_platform.db_url import libpq_url
from aether_platform.relay import SESSION_PREFIX, Relay, RelayConfig
from tests.conftest import drop_database, migrated_database, wait_for
from tests.relay.conftest import write_events

TRICKLE = 15      # one at a time: enough executions for the claim and the mark to be prepared and generic
KEYS, PER_KEY = 1000, 3
PUBLISHED_INDEX = "IX_outbox_events_published_occurred"
BLOCKED_KEY_INDEX = "ix_outbox_events_blocked_key"
# Index entries the relay may read per event, over all the outbox's indexes: the claim's walk of
# the pending rows, the blocked probe, the mark by id. A walk per claimed row reads hundreds.
ENTRIES_PER_EVENT = 10


def _reads(conn: psycopg.Connection) -> dict[str, int]:
    """Sequential scans of the outbox, the rows they read, and the entries read from each of its indexes."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    seq_scan, seq_rows = conn.execute(
        "SELECT seq_scan, seq_tup_read FROM pg_stat_user_tables WHERE relname = 'outbox_events'").fetchone()
    indexes = conn.execute(
        "SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes WHERE relname = 'outbox_events'").fetchall()
    return {"seq_scan": seq_scan, "seq_rows": seq_rows, **dict(indexes)}


def _relay_reads(base_database_url: str, bootstrap: str, topic: str,
                 prepare: Callable[[psycopg.Connection], None],
                 feed: Callable[[psycopg.Connection, Relay], int]) -> tuple[int, dict[str, int]]:
    """In a database of its own, so that the server's counters are this relay's alone: `prepare`
    it, start a streaming relay, let `feed` write events and wait for them (it returns how many),
    and return that count with what the relay's session read meanwhile."""
    name = f"aether_test_plans_{uuid.uuid4().hex[:8]}"
    url = migrated_database(base_database_url, name)
    relay = Relay(RelayConfig.from_env(dsn=url, bootstrap=bootstrap, topic=topic), mode="streaming")
    runner = threading.Thread(target=relay.run, daemon=True)
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            prepare(conn)
            # This session's own counts reach the shared ones only now and then; they must not
            # land after `before`.
            conn.execute("SELECT pg_stat_force_next_flush()")
            before = _reads(conn)
            runner.start()
            events = feed(conn, relay)
            relay.stop()
            runner.join(30)
            # A backend reports its counters when it exits.
            wait_for("the relay's session to end", lambda: not conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND starts_with(application_name, %s)", (SESSION_PREFIX,)).fetchone()[0], 30)
            return events, {k: v - before[k] for k, v in _reads(conn).items()}
    finally:
        relay.stop()
        if runner.is_alive():  # not started if the test failed before: join() would hide why
            runner.join(30)
        drop_database(base_database_url, name)


def _trickle_then_backlog(tenant: str, keys: int = KEYS, per_key: int = PER_KEY
                          ) -> Callable[[psycopg.Connection, Relay], int]:
    def feed(conn: psycopg.Connection, relay: Relay) -> int:
        start = relay.totals.published
        for i in range(TRICKLE):
            write_events(conn, tenant, [uuid.uuid4()], per_key=1)
            wait_for(f"trickle event {i + 1}", lambda: relay.totals.published == start + i + 1, 30)
        write_events(conn, tenant, [uuid.uuid4() for _ in range(keys)], per_key=per_key)
        events = TRICKLE + keys * per_key
        wait_for("the backlog to drain", lambda: relay.totals.published == start + events, 300)
        return events
    return feed


def _assert_probes_by_key(events: int, reads: dict[str, int]) -> None:
    assert (reads["seq_scan"], reads["seq_rows"]) == (0, 0), \
        f"{reads['seq_scan']} sequential scans of the outbox read {reads['seq_rows']} rows"
    entries = {k: v for k, v in reads.items() if k not in ("seq_scan", "seq_rows") and v}
    assert sum(entries.values()) <= ENTRIES_PER_EVENT * events, \
        f"{sum(entries.values()) / events:.0f} index entries read per event: {entries}"
    # Only retention reads the published_at index; a probe through it reads every pending row.
    assert reads[PUBLISHED_INDEX] == 0, \
        f"{reads[PUBLISHED_INDEX] / events:.0f} {PUBLISHED_INDEX} entries read per event"


def test_a_relay_that_planned_on_an_empty_outbox_drains_a_backlog_by_its_indexes(
        base_database_url, kafka_bootstrap, topic, tenant):
    events, reads = _relay_reads(base_database_url, kafka_bootstrap, topic, lambda conn: None,
                                 _trickle_then_backlog(tenant))
    _assert_probes_by_key(events, reads)


def test_statistics_taken_with_nothing_pending_do_not_turn_the_claim_into_a_scan_of_the_backlog(
        base_database_url, kafka_bootstrap, topic, tenant):
    def published_and_analyzed(conn: psycopg.Connection) -> None:
        # Autovacuum would analyze again partway through the backlog; this test is about what the
        # planner believes before that.
        conn.execute("ALTER TABLE outbox_events SET (autovacuum_enabled = false)")
        for _ in range(10):
            write_events(conn, tenant, [uuid.uuid4() for _ in range(1000)], per_key=1)
        conn.execute("UPDATE outbox_events SET published_at = now(), kafka_partition = 0, kafka_offset = 0")
        conn.execute("ANALYZE outbox_events")

    events, reads = _relay_reads(base_database_url, kafka_bootstrap, topic, published_and_analyzed,
                                 _trickle_then_backlog(tenant))
    _assert_probes_by_key(events, reads)


def test_a_backlog_on_one_hot_key_drains_without_rereading_it_for_every_event(
        base_database_url, kafka_bootstrap, topic, tenant):
    """Every claimed row asks whether an earlier row of its key is blocked; on one key with
    thousands pending, reading the key's earlier pending rows to answer made the drain quadratic."""
    events, reads = _relay_reads(base_database_url, kafka_bootstrap, topic, lambda conn: None,
                                 _trickle_then_backlog(tenant, keys=1, per_key=KEYS * PER_KEY))
    _assert_probes_by_key(events, reads)
