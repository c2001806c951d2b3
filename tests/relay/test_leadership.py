"""Two relay processes at once, as Dagster runs them during a handover: one leads, the other
waits on the leader lock and publishes nothing; when the leader is stopped the waiting one takes
over, and the topic holds every event exactly once, in per-key order, across the handover."""
from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter

import psycopg
import pytest

from aether_platform.db_url import libpq_url
from aether_platform.relay import LOCK_KEY, SESSION_PREFIX
from tests.conftest import wait_for
from tests.relay.conftest import assert_per_key_order, consume, relay_process, write_events

pytestmark = pytest.mark.slow

# Who holds the leader lock and who waits for it, by run id (the relay's application_name).
LOCK_HOLDERS_SQL = """
    SELECT substr(a.application_name, length(%(prefix)s::text) + 1), l.granted
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND a.datname = current_database()
      AND l.classid = %(classid)s::oid AND l.objid = %(objid)s::oid AND l.objsubid = 2
"""


def _lock_holders(db) -> dict[str, bool]:
    rows = db.execute(LOCK_HOLDERS_SQL, {"prefix": SESSION_PREFIX, "classid": LOCK_KEY[0], "objid": LOCK_KEY[1]})
    return {run: granted for run, granted in rows.fetchall()}


def _published(db) -> int:
    return db.execute("SELECT count(*) FROM outbox_events WHERE published_at IS NOT NULL").fetchone()[0]


class Writer(threading.Thread):
    """Writes outbox rows the way the API does, a small transaction at a time, until stopped:
    the handover happens under a steady trickle, and every key gets events on both sides of it."""

    def __init__(self, url: str, tenant: str, keys: list[uuid.UUID]):
        super().__init__(daemon=True)
        self.url, self.tenant, self.keys = url, tenant, keys
        self.events: list = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(libpq_url(self.url), autocommit=True) as conn:
                while not self.stopping.is_set():
                    with conn.transaction():
                        self.events += write_events(conn, self.tenant, self.keys, per_key=1)
                    time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def stop(self) -> list:
        self.stopping.set()
        self.join(timeout=30)
        assert not self.is_alive() and self.error is None, f"the writer failed: {self.error!r}"
        return self.events


def test_one_relay_leads_the_other_waits_and_takes_over_with_no_gap_or_duplicate(
        outbox_db, platform_env, tenant, kafka_bootstrap, topic, tmp_path):
    env = {**platform_env, "AETHER_RELAY_BATCH_SIZE": "50"}
    writer = Writer(platform_env["DATABASE_URL"], tenant, [uuid.uuid4() for _ in range(20)])
    first = relay_process(env, "--mode", "streaming", "--run-id", "relay-a", log=tmp_path / "relay-a.log")
    second = None
    try:
        wait_for("relay-a to lead", lambda: _lock_holders(outbox_db) == {"relay-a": True}, 60, first)
        second = relay_process(env, "--mode", "streaming", "--run-id", "relay-b", log=tmp_path / "relay-b.log")
        wait_for("relay-b to wait for the lock",
                 lambda: _lock_holders(outbox_db) == {"relay-a": True, "relay-b": False}, 60, first, second)

        writer.start()
        # While both run, only relay-a publishes: relay-b stays a waiter however much there is to do.
        wait_for("relay-a to publish under load", lambda: _published(outbox_db) >= 1000, 60, first, second)
        holders = _lock_holders(outbox_db)  # relay-b is between two one-second lock waits, or in one
        assert holders["relay-a"] is True and holders.get("relay-b", False) is False, holders
        assert "leads" not in (tmp_path / "relay-b.log").read_text()

        first.send_signal(signal.SIGTERM)  # the leader stops mid-stream; the writer goes on
        assert first.wait(30) == 0, (tmp_path / "relay-a.log").read_text()
        wait_for("relay-b to lead", lambda: _lock_holders(outbox_db) == {"relay-b": True}, 30, second)
        at_handover = len(writer.events)
        wait_for("writes after the handover", lambda: len(writer.events) >= at_handover + 1000, 60, second)
        events = writer.stop()
        wait_for("relay-b to publish everything", lambda: _published(outbox_db) == len(events), 60, second)
    finally:
        writer.stopping.set()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)

    records = consume(kafka_bootstrap, topic, {str(e.event_id) for e in events})
    counts = Counter(r.event_id for r in records)
    assert set(counts) == {str(e.event_id) for e in events}, "an event was lost in the handover"
    assert max(counts.values()) == 1, "a stopped leader commits what it sent: nothing may be sent twice"
    assert_per_key_order(records, events)
    # Both relays did publish: the handover happened in the middle of the stream.
    assert "relay relay-a leads" in (tmp_path / "relay-a.log").read_text()
    assert "relay relay-b leads" in (tmp_path / "relay-b.log").read_text()
