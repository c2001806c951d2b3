"""The outbox relay, reader side: publishes committed outbox rows to Kafka. Plain Python; the
Dagster jobs in aether_platform.dagster_defs only run it.

Guarantees:
- At least once. A batch is claimed with SELECT … FOR UPDATE SKIP LOCKED, produced, and marked
  published in that same transaction only after Kafka acknowledged every record (acks=all,
  idempotent producer). A kill at any moment rolls the claim back; the only duplicates are a
  batch acknowledged but not yet committed and, after a database crash, marks committed but not
  yet flushed (SESSION_OPTIONS), both re-sent with the same event ids.
- Per-key order. One leader at a time, elected with a session advisory lock held on the claim
  connection itself (if that connection dies, leadership and claim die together). A successor
  blocks on the lock, so a handover has no gap. The claim takes rows in id order and skips a row
  whose key has an earlier unpublished row that is blocked (dead-lettered or backing off); within
  a batch, once a key fails, its later rows are not produced.
- A relay started with wait_for_lead=False (a manual Dagster materialization) never queues
  behind a leader: it tries the lock once and, if another relay holds it, raises RelayBusy naming
  the leader's run, having claimed nothing.
- Poison isolation. A permanent error (e.g. a record over MAX_MESSAGE_BYTES, refused
  synchronously by produce()) counts against the event: retry_count + 1 and last_error, a
  per-event backoff, and after max_retries the dead-letter state. It blocks only its own key.
  Transient errors (broker down, timeouts) are not the event's fault: the rows get a
  next_attempt_at, the relay backs off exponentially, and retry_count is untouched.

When it claims (streaming mode): when rung, else by an adaptive poll.
- A writer rings the leader's doorbell after its commit (aether_platform/doorbell.py: one UDP
  datagram, never in the write's way), and the relay claims at once, or, if an operator caps
  the share of its time rings may keep it busy (doorbell_max_busy, Relay._rest), once it has
  rested in proportion to its last cycle. Not LISTEN/NOTIFY: a NOTIFY takes a database-wide lock
  at commit and serialized every writer (migration 0005).
- A ring is only a hint. Rings can be lost and some writers never ring, so the relay also polls,
  and the cost of polling is kept where it buys latency:
  - while batches come back full it claims again at once (a backlog drains at full speed);
  - after a partial batch (events flowing, outbox drained) it waits idle_poll_seconds (10 ms);
  - after an empty claim the wait doubles, up to idle_poll_max_seconds (100 ms), and snaps back
    to the fast interval on the first claim that finds a row, or on a ring.
  An idle relay thus makes ~10 cheap, lock-free claims a second instead of 50 (measured with
  bench/relay_idle.py, /proc CPU time of the relay and its database session: 3.2 % of a core at a
  fixed 20 ms, 0.7 % adaptive).
Only the timing of claims changes, whether rung or polled; which rows are claimed, and in what
order, does not, so per-key order and the single leader are untouched.
"""
from __future__ import annotations

import argparse
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import psycopg
from psycopg.types.json import Jsonb
from confluent_kafka import KafkaError, KafkaException, Producer
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aether_platform import logs
from aether_platform.db_url import libpq_url
from aether_platform.doorbell import Doorbell
from aether_platform.kafka_client import client_config
from aether_platform.outbox_stats import OutboxStats, outbox_stats
from aether_platform.settings import get_settings
from aether_platform.topics import MAX_MESSAGE_BYTES

log = logging.getLogger("aether.relay")

RELAY_NAME = "outbox-relay"
# pg_advisory_lock(int4, int4): "AETH" and lane 1. Two-int form so pg_locks shows it as
# classid/objid with objsubid 2, which is how a leader sees a successor waiting.
LOCK_KEY = (0x41455448, 1)

# Errors that are the record's fault: retrying the same bytes can never succeed.
PERMANENT_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG,
    KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD,
})

# A row may be claimed when it is pending, due, and no earlier row of its key is blocked.
# Shared with the Dagster sensor so that it never launches a run that would find nothing to do.
# "Due" and "blocked" are judged at one instant, the statement's start: clock_timestamp() moves
# while the claim scans, so a backoff ending between an earlier row and a later one of the same
# key let the later one be claimed alone and overtake it on the topic.
# OFFSET 0 keeps "blocked" a probe per candidate row, by its key and id: without it the planner
# may fold NOT EXISTS into an anti-join, and the generic plan of one costed on a near-empty outbox
# walked a whole index for every candidate row (see PLANNER_OPTIONS).
# The probe reads ix_outbox_events_blocked_key, which holds only rows that can block (migration
# 0009), so it costs the same however long the key's backlog; reading every earlier pending row
# of the key instead drained one hot key's 5,000-event backlog at 1,091 events/s, not 54,564/s.
# With statistics taken while nothing was pending the planner used to probe through the
# published_at index instead, reading every pending row per candidate (3,300/s instead of
# 52,000/s), until migration 0008 made that index hold published rows only.
ELIGIBLE = """
    e.published_at IS NULL AND e.dead_lettered_at IS NULL
    AND (e.next_attempt_at IS NULL OR e.next_attempt_at <= statement_timestamp())
    AND NOT EXISTS (
        SELECT 1 FROM outbox_events b
        WHERE b.aggregate_key = e.aggregate_key AND b.id < e.id AND b.published_at IS NULL
          AND (b.dead_lettered_at IS NOT NULL OR b.next_attempt_at > statement_timestamp())
        OFFSET 0)
"""

CLAIM_SQL = f"""
    SELECT e.id, e.event_id::text, e.type, e.tenant_id::text, e.aggregate_key, e.payload::text,
           to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), e.traceparent
    FROM outbox_events e
    WHERE {ELIGIBLE}
    ORDER BY e.id
    LIMIT %s
    FOR UPDATE OF e SKIP LOCKED
"""

MARK_PUBLISHED_SQL = """
    UPDATE outbox_events o SET published_at = clock_timestamp(), kafka_partition = u.p, kafka_offset = u.o
    FROM unnest(%s::bigint[], %s::int[], %s::bigint[]) AS u(id, p, o) WHERE o.id = u.id
"""

# Backoff doubles with each failed attempt of the event: base, 2·base, 4·base … up to the cap.
MARK_PERMANENT_SQL = """
    UPDATE outbox_events o SET
        retry_count = coalesce(o.retry_count, 0) + 1,
        last_error = u.err,
        next_attempt_at = clock_timestamp()
            + make_interval(secs => least(%(cap)s, %(base)s * power(2, coalesce(o.retry_count, 0)))),
        dead_lettered_at = CASE WHEN coalesce(o.retry_count, 0) + 1 >= %(max)s THEN clock_timestamp() END
    FROM unnest(%(ids)s::bigint[], %(errs)s::text[]) AS u(id, err) WHERE o.id = u.id
    RETURNING o.dead_lettered_at IS NOT NULL
"""

MARK_TRANSIENT_SQL = """
    UPDATE outbox_events o SET last_error = u.err, next_attempt_at = clock_timestamp() + make_interval(secs => %s)
    FROM unnest(%s::bigint[], %s::text[]) AS u(id, err) WHERE o.id = u.id
"""

STATUS_SQL = """
    INSERT INTO relay_status AS s (relay, heartbeat_at, run_id, mode, published_total, attempts_total,
                                   failures_total, dead_lettered_total, doorbell)
    VALUES (%(relay)s, now(), %(run_id)s, %(mode)s, %(published)s, %(attempts)s, %(failures)s, %(dead)s,
            %(doorbell)s)
    ON CONFLICT (relay) DO UPDATE SET
        heartbeat_at = now(), run_id = excluded.run_id, mode = excluded.mode, doorbell = excluded.doorbell,
        published_total = s.published_total + excluded.published_total,
        attempts_total = s.attempts_total + excluded.attempts_total,
        failures_total = s.failures_total + excluded.failures_total,
        dead_lettered_total = s.dead_lettered_total + excluded.dead_lettered_total
"""

# The relay's statements are index probes by design (the claim walks ix_outbox_events_pending in id
# order and probes each candidate's key; a mark looks up each id), and must stay so whatever the
# planner believed when it planned them. psycopg prepares a statement on its fifth execution, and
# the server may then keep one generic plan, costed on the table as it was, until the next ANALYZE.
# A relay that started on an empty outbox (a fresh deployment, a truncated table, every test and
# benchmark database) kept a mark that hashed a sequential scan of the whole table and a claim that
# walked a whole index for each candidate row. Measured on the 2-core machine
# (bench/relay_latency.py's setup, /proc): a 20,000-event backlog then drained at 200 events/s
# instead of about 40,000; a steady 680 events/s cost the relay's session 756 µs of CPU per event
# instead of 279, and commit → ack p50 was 2.0–2.4 ms instead of 0.7–0.9. These settings make the
# planner take the index path even when it believes the table tiny (they add a cost penalty, they
# forbid nothing: a statement with no index path still runs); ELIGIBLE's OFFSET 0 covers the probe.
# Merge joins too: planned for a batch of 500 on an outbox of 10,000 rows, the mark merge-joined
# the ids with a walk of the whole primary key from its first row (13 ms instead of 2).
PLANNER_OPTIONS = "-c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off"

# synchronous_commit=off: a mark need not wait for its WAL flush. A database crash can forget the
# last few hundred milliseconds of marks; those events are sent again with the same ids (at least
# once), never lost, because the writer committed the events themselves durably.
SESSION_OPTIONS = "-c synchronous_commit=off " + PLANNER_OPTIONS

# A relay's database session names its run, so that whoever can see pg_stat_activity (the
# Dagster sensor) can tell a live relay run from one whose process died: the server ends a
# session as soon as its client's socket closes, including after a kill -9.
SESSION_PREFIX = "aether-relay:"

LIVE_RUNS_SQL = """
    SELECT substr(application_name, length(%(prefix)s::text) + 1) FROM pg_stat_activity
    WHERE datname = current_database() AND starts_with(application_name, %(prefix)s::text)
"""

SUCCESSOR_WAITING_SQL = """
    SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                   WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()
                     AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = 2)
"""

# The relay holding the leader lock, named by its session (SESSION_PREFIX + run id).
LEADER_SQL = """
    SELECT a.application_name FROM pg_locks l
    JOIN pg_database d ON d.oid = l.database JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()
      AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = 2
"""


class RelayBusy(RuntimeError):
    """Another relay leads; raised instead of waiting when the relay was told not to wait."""

    def __init__(self, leader: str | None):
        self.leader = leader
        super().__init__(f"the outbox relay is led by run {leader or '(unknown: its session is not visible)'}")


def leader_run(conn: psycopg.Connection) -> str | None:
    """Run id of the relay that holds the leader lock, or None when no relay leads (or its
    session is not visible to this role)."""
    row = conn.execute(LEADER_SQL, LOCK_KEY).fetchone()
    if row is None or not (row[0] or "").startswith(SESSION_PREFIX):
        return None
    return row[0][len(SESSION_PREFIX):]


class RelaySettings(BaseSettings):
    """Every setting of the relay and of the sensor that keeps it going, with its environment
    variable and default: their one home. The Dagster definitions show them as the `relay`
    resource's config (aether_platform.dagster_defs.resources.RelayResource, built from these
    fields), and `python -m aether_platform.relay` reads them from the environment."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # streaming: one long-lived leader, relaunched with a handover; batch: a run per due backlog.
    mode: str = Field("streaming", alias="AETHER_RELAY_MODE", pattern="^(streaming|batch)$", description=(
        "`streaming`: one long relay run, handed over as it ages; `batch`: a run whenever an event is due."))
    batch_size: int = Field(500, alias="AETHER_RELAY_BATCH_SIZE", gt=0, description=(
        "Outbox rows the relay claims per batch."))
    # Failed attempts after which an event is dead-lettered (it then blocks only its own key).
    max_retries: int = Field(5, alias="AETHER_RELAY_MAX_RETRIES", gt=0, description=(
        "Failed attempts after which an event is dead-lettered (`aether outbox requeue` revives it)."))
    # A streaming run's lifetime, and how long before its end the sensor launches the successor
    # that waits on the leader lock (so the handover has no gap).
    lifetime_seconds: float = Field(3600.0, alias="AETHER_RELAY_LIFETIME_SECONDS", gt=0, description=(
        "Age at which a streaming relay run is handed over to a successor."))
    handover_lead_seconds: float = Field(60.0, alias="AETHER_RELAY_HANDOVER_LEAD_SECONDS", ge=0, description=(
        "How long before that age the successor is launched, to wait on the leader lock."))
    # A STARTED relay run with no database session for this long is reported failed and replaced.
    dead_after_seconds: float = Field(30.0, alias="AETHER_RELAY_DEAD_AFTER_SECONDS", gt=0, description=(
        "A started relay run with no database session this long is reported failed and replaced."))
    # The asset check oldest_pending_is_young fails past this age of the oldest pending event.
    max_pending_age_seconds: float = Field(60.0, alias="AETHER_OUTBOX_MAX_PENDING_AGE_SECONDS", gt=0, description=(
        "The outbox asset check fails when the oldest pending event is older than this."))
    # Upper bound on how long a batch waits for its delivery reports before the rows count as a
    # transient failure and back off. Long on purpose: until it expires, librdkafka retries the
    # same records with the same idempotent sequence numbers, so a broker outage shorter than
    # this ends with no duplicate on the topic. Past it, records are re-sent as new ones, and a
    # record the broker had written without acknowledging appears twice (same event id).
    message_timeout_ms: int = Field(300_000, alias="AETHER_RELAY_MESSAGE_TIMEOUT_MS", description=(
        "How long a batch waits for its delivery reports before its rows count as a transient failure."))
    # Wait before reconnecting after the database connection is lost (restart, failover).
    reconnect_seconds: float = Field(1.0, alias="AETHER_RELAY_RECONNECT_SECONDS", description=(
        "Wait before reconnecting after the database connection is lost."))
    retry_backoff_seconds: float = Field(1.0, alias="AETHER_RELAY_RETRY_BACKOFF_SECONDS", description=(
        "First wait before retrying an event the broker rejected; it grows with each attempt."))
    retry_backoff_cap_seconds: float = Field(300.0, alias="AETHER_RELAY_RETRY_BACKOFF_CAP_SECONDS", description=(
        "Longest wait between two attempts of a rejected event."))
    transient_backoff_seconds: float = Field(0.5, alias="AETHER_RELAY_TRANSIENT_BACKOFF_SECONDS", description=(
        "First wait after a transient failure (broker away, timeout); it grows while they last."))
    transient_backoff_cap_seconds: float = Field(30.0, alias="AETHER_RELAY_TRANSIENT_BACKOFF_CAP_SECONDS", description=(
        "Longest wait after transient failures."))
    heartbeat_seconds: float = Field(2.0, alias="AETHER_RELAY_HEARTBEAT_SECONDS", description=(
        "Interval of the relay's heartbeat (the SLO's heartbeat age)."))
    observe_seconds: float = Field(10.0, alias="AETHER_RELAY_OBSERVE_SECONDS", description=(
        "Interval at which a relay run reports outbox statistics to Dagster."))
    # A streaming relay past its lifetime keeps leading until a successor waits for the lock,
    # but no longer than this, so that a missing successor cannot keep it alive for ever.
    handover_grace_seconds: float = Field(120.0, alias="AETHER_RELAY_HANDOVER_GRACE_SECONDS", description=(
        "Longest a streaming relay past its lifetime keeps leading while no successor waits."))
    linger_ms: int = Field(5, alias="AETHER_RELAY_LINGER_MS", description=(
        "The producer's linger.ms: how long it gathers records into one request."))
    # Streaming mode claims at once when rung (doorbell_host below) and while batches come back
    # full. Otherwise, after a partial batch
    # (events flowing, outbox drained) it claims again after idle_poll_seconds; after each EMPTY
    # claim the wait doubles, up to idle_poll_max_seconds, and the first claim that finds a row
    # snaps it back (see Relay._pause for why). Not LISTEN/NOTIFY: a NOTIFY takes a database-wide
    # lock at commit and serialized every writer's commit (migration 0005).
    # A busy cycle costs about 3 ms of CPU across the relay, its database session and the broker
    # (a produce request, and a fetch for every consumer); an empty one about 0.7 ms (relay and
    # session, measured with bench/relay_idle.py). The fast interval trades CPU under a steady
    # trickle for commit-to-ack latency (about half the interval at p50), so it stays an
    # operator's knob. Relay process + session CPU at 500 events/s by poll alone (writers not
    # ringing; bench/relay_latency.py's setup, /proc, 2-core box; the broker's share comes on
    # top): 0.09 cores at 20 ms, 0.14 at 10 ms, 0.22 at 5 ms, with p50 12.9, 7.2 and 4.1 ms.
    # 10 ms takes most of the latency gain for a modest share of CPU.
    idle_poll_seconds: float = Field(0.01, alias="AETHER_RELAY_IDLE_POLL_SECONDS", description=(
        "Wait before the next claim of a streaming relay after a short batch, unless a writer rings its doorbell."))
    # The longest wait between claims of an idle relay, and so the extra latency of the first
    # event after a quiet spell. At 0.1 s an idle relay makes ~10 empty claims/s instead of 50 at a
    # fixed 20 ms: measured 3.2 % of a core before (relay + its database session), see
    # BENCHMARKS.md's relay_idle section for after.
    idle_poll_max_seconds: float = Field(0.1, alias="AETHER_RELAY_IDLE_POLL_MAX_SECONDS", description="Longest wait between claims of an idle relay: the extra latency of the first event after a quiet spell.")
    # The streaming leader's doorbell (aether_platform/doorbell.py): writers ring it after each
    # commit, so it claims at once instead of at its next poll. The poll stays, for lost rings and
    # for writers that never ring. Its price is more claim cycles than one per 10 ms: answering
    # every ring at once, measured on the 2-core machine (bench/relay_latency.py's setup, one run
    # after the other), commit → ack p50 was 1.02 ms against 7.27 ms by poll alone at 402
    # events/s, for 0.39 cores of relay + session CPU against 0.16 (at 594 events/s: below).
    # doorbell_max_busy bounds that share; where CPU matters more than milliseconds, turn the
    # doorbell off. In a container, bind 0.0.0.0 and advertise the address the API's containers
    # reach it by (deploy/compose.yaml: the daemon's service name).
    doorbell_host: str = Field("127.0.0.1", alias="AETHER_RELAY_DOORBELL_HOST", description=(
        "Address the streaming relay's doorbell (a UDP wake-up writers send after each commit) binds, on a port "
        "of its choosing; `off` leaves the relay to its poll alone."))
    doorbell_advertise_host: str = Field("", alias="AETHER_RELAY_DOORBELL_ADVERTISE_HOST", description=(
        "Address writers ring the doorbell at (default: the bound address; required when that is 0.0.0.0)."))
    # Default 1 (answer every ring at once): measured at 594 events/s on the 2-core machine, two
    # interleaved pairs of runs, 1 gave commit → ack p50 0.79 / 0.89 ms and p99 2.31 / 2.71 ms
    # for 0.47 / 0.50 cores of relay + session; 0.5 gave p50 2.72 / 1.83 ms and p99 7.61 / 6.57
    # ms for 0.36 / 0.37 cores. The relay normally has its own run pod, so latency wins by
    # default; lower it where the relay shares cores with the API.
    doorbell_max_busy: float = Field(1.0, alias="AETHER_RELAY_DOORBELL_MAX_BUSY", gt=0, le=1, description=(
        "Most of its time rings may keep the streaming relay claiming: after a cycle of t seconds it answers "
        "the next ring no sooner than t·(1/share − 1) later, so a steady stream travels in batches (1: at once)."))

    @field_validator("doorbell_host")
    @classmethod
    def _doorbell_off(cls, value: str) -> str:
        return "off" if value.strip().lower() == "off" else value.strip()


class RelayConfig(RelaySettings):
    """What one relay needs: its settings, plus where to read and where to publish."""

    dsn: str
    bootstrap: str
    topic: str


    @classmethod
    def from_env(cls, **overrides) -> "RelayConfig":
        s = get_settings()
        values = dict(dsn=s.database_url, bootstrap=s.kafka_bootstrap_servers, topic=s.topic)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def producer_config(self) -> dict:
        quiet = logging.getLogger("aether.relay.kafka")
        return {
            **client_config(self.bootstrap),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.linger_ms,
            "batch.size": MAX_MESSAGE_BYTES - 64 * 1024,
            "batch.num.messages": 100_000,
            "compression.type": "lz4",
            # Same limit as the topic: an oversized record fails at produce(), before the
            # later events of its key are sent, instead of in a delivery report.
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "message.timeout.ms": self.message_timeout_ms,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            # The Java client's partitioner, so every producer of a key picks the same partition.
            "partitioner": "murmur2_random",
            "logger": quiet,
        }


@dataclass
class Totals:
    published: int = 0
    attempts: int = 0
    failures: int = 0
    dead_lettered: int = 0
    batches: int = 0

    def add(self, other: "Totals") -> None:
        self.published += other.published
        self.attempts += other.attempts
        self.failures += other.failures
        self.dead_lettered += other.dead_lettered
        self.batches += other.batches


def has_eligible(conn: psycopg.Connection) -> bool:
    return conn.execute(f"SELECT EXISTS (SELECT 1 FROM outbox_events e WHERE {ELIGIBLE})").fetchone()[0]


def live_relay_runs(conn: psycopg.Connection) -> set[str]:
    """Run ids of the relays connected to this database, leading or waiting to lead. Sessions
    of other roles are included only if this role may read their application_name (the same
    role, a superuser, or pg_read_all_stats)."""
    rows = conn.execute(LIVE_RUNS_SQL, {"prefix": SESSION_PREFIX}).fetchall()
    return {r[0] for r in rows}


def mark_published(conn: psycopg.Connection, acked: list[tuple[int, int, int]]) -> None:
    """Set published_at, partition and offset for (id, partition, offset) rows, in one statement."""
    # Array literals: psycopg's list dumper costs more than the UPDATE's planning.
    conn.execute(MARK_PUBLISHED_SQL, tuple("{" + ",".join(map(str, col)) + "}" for col in zip(*acked)))


def requeue(conn: psycopg.Connection, event_ids: list[str] | None = None) -> int:
    """Give dead-lettered events a fresh set of attempts, once their cause is fixed. None means
    all of them. Returns how many were requeued."""
    sql = ("UPDATE outbox_events SET dead_lettered_at = NULL, retry_count = 0, next_attempt_at = NULL"
           " WHERE dead_lettered_at IS NOT NULL AND published_at IS NULL")
    if event_ids is None:
        cur = conn.execute(sql)
    else:
        cur = conn.execute(sql + " AND event_id = ANY(%s::uuid[])", ([str(uuid.UUID(e)) for e in event_ids],))
    return cur.rowcount


_HELD_BACK = object()  # not produced: an earlier event of its key failed in this batch


@dataclass
class _Outcome:
    published: list[tuple[int, int, int]] = field(default_factory=list)
    permanent: list[tuple[int, str]] = field(default_factory=list)
    transient: list[tuple[int, str]] = field(default_factory=list)
    held_back: int = 0
    broken_producer: bool = False


class Relay:
    """One relay process's loop. `run()` returns when the batch mode has drained, the streaming
    lifetime has ended (and a successor took over or the grace ran out), or `stop()` was called."""

    def __init__(self, config: RelayConfig, mode: str = "batch", run_id: str | None = None,
                 on_progress: Callable[[OutboxStats, Totals], None] | None = None,
                 wait_for_lead: bool = True, on_lead: Callable[[], None] | None = None):
        if mode not in ("batch", "streaming"):
            raise ValueError(f"mode must be batch or streaming, not {mode!r}")
        self.config = config
        self.mode = mode
        self.run_id = run_id
        self.on_progress = on_progress
        self.wait_for_lead = wait_for_lead
        self.on_lead = on_lead
        self.totals = Totals()
        self._unflushed = Totals()
        self._stopping = False
        self._producer: Producer | None = None
        self._transient_streak = 0
        self._idle_wait = config.idle_poll_seconds
        self._doorbell: Doorbell | None = None

    def stop(self) -> None:
        self._stopping = True
        doorbell = self._doorbell
        if doorbell is not None:
            doorbell.interrupt()  # don't sleep out the poll

    # ------------------------------------------------------------------ main loop

    def run(self, lifetime_seconds: float | None = None) -> Totals:
        """Relay until stopped, drained (batch mode) or past the lifetime (streaming mode).

        A lost database connection (a PostgreSQL restart) ends the claim and the leadership
        with it; the relay reconnects and competes for the lock again. An unfinished batch was
        rolled back by the server, so its rows are claimed and sent again (same event ids)."""
        started = time.monotonic()
        with logs.bound(run_id=self.run_id):
            return self._run(started, lifetime_seconds)

    def _run(self, started: float, lifetime_seconds: float | None) -> Totals:
        while True:
            try:
                return self._run_connected(started, lifetime_seconds)
            except psycopg.OperationalError as exc:
                if self._stopping:
                    return self.totals
                log.warning("relay: database connection lost (%s); reconnecting in %.1fs",
                            str(exc).splitlines()[0], self.config.reconnect_seconds)
                self._producer = None
                deadline = time.monotonic() + self.config.reconnect_seconds
                while not self._stopping and time.monotonic() < deadline:
                    time.sleep(0.1)

    def _run_connected(self, started: float, lifetime_seconds: float | None) -> Totals:
        cfg = self.config
        session = (SESSION_PREFIX + (self.run_id or "standalone"))[:63]  # NAMEDATALEN - 1
        with psycopg.connect(libpq_url(cfg.dsn), application_name=session, options=SESSION_OPTIONS) as conn:
            if not self._lead(conn):
                return self.totals
            try:
                self._producer = Producer(cfg.producer_config())
                if self.mode == "streaming" and cfg.doorbell_host != "off":
                    try:
                        self._doorbell = Doorbell(cfg.doorbell_host, cfg.doorbell_advertise_host)
                    except (OSError, ValueError) as exc:
                        # Latency only: without a doorbell the relay polls, and every event goes out.
                        log.warning("relay: no doorbell (%s); claiming by poll alone", exc)
                last_beat = last_observe = last_retire_check = 0.0
                while not self._stopping:
                    cycle_started = time.monotonic()
                    claimed, outcome = self._cycle(conn)
                    now = time.monotonic()
                    if now - last_beat >= cfg.heartbeat_seconds:
                        self._beat(conn)
                        last_beat = now
                    if self.on_progress and now - last_observe >= cfg.observe_seconds:
                        self._observe(conn)
                        last_observe = now
                    if outcome.transient or outcome.broken_producer:
                        self._back_off(conn, outcome)
                        continue
                    self._transient_streak = 0
                    if lifetime_seconds is not None and now - last_retire_check >= 1.0:
                        last_retire_check = now
                        if self._retire(conn, now - started - lifetime_seconds):
                            break
                    if claimed == cfg.batch_size:
                        continue
                    if self.mode == "batch":
                        if claimed == 0:
                            break
                        continue
                    busy = time.monotonic() - cycle_started
                    pause = self._pause(claimed) - busy
                    if pause > 0:
                        if self._doorbell is None:
                            time.sleep(pause)
                        else:
                            self._wait_for_ring(pause, self._rest(claimed, busy))
            finally:
                # Stepping down: the last beat clears the doorbell, so writers stop ringing it.
                if self._doorbell is not None:
                    self._doorbell.close()
                    self._doorbell = None
                # An unfinished batch is rolled back, never marked: what it sent is re-sent later.
                if not conn.broken:
                    conn.rollback()
                    self._beat(conn)
                    if self.on_progress:
                        self._observe(conn)
        return self.totals

    def _pause(self, claimed: int) -> float:
        """How long a streaming relay waits before its next claim, the outbox being drained,
        unless a writer rings its doorbell first (then it claims at once: a ring means a row is
        committed, so the claim finds work and costs nothing wasted).

        A partial batch means events are flowing: claim again after the fast interval. For
        writers that do not ring, claiming at once instead would cost a transaction and a Kafka
        request per few events under a steady trickle (~160 cycles/s at 500 events/s,
        measured); waiting out the interval batches them, for at most that much latency.

        An empty claim means nothing is flowing: each one doubles the wait, up to
        idle_poll_max_seconds, so an idle relay costs a few empty claims a second instead of
        fifty. The first claim that finds a row snaps the wait back to the fast interval, so a
        burst pays the long wait at most once (its first event), and a steady stream never
        does. Nothing here touches the writers: they commit as before, and the relay's empty
        claim is one indexed read that locks nothing. Per-key order is untouched too: only
        *when* the one leader claims changes, never which rows or in what order."""
        cfg = self.config
        if claimed:
            self._idle_wait = cfg.idle_poll_seconds
        else:
            self._idle_wait = min(cfg.idle_poll_max_seconds, max(self._idle_wait * 2, cfg.idle_poll_seconds, 0.001))
        return self._idle_wait

    def _rest(self, claimed: int, busy: float) -> float:
        """How long a rung relay rests after a cycle that took `busy` seconds before it answers
        a ring: busy · (1/doorbell_max_busy − 1), so rings keep it claiming at most that share
        of its time. Why: answering every ring at once (the default, share 1) costs a whole
        cycle (claim, produce, flush, mark: about 0.8 ms of relay and session CPU) per event or
        two under a steady stream, a lot where the relay shares cores with the API (figures at
        RelaySettings.doorbell_max_busy). Resting makes the rings that come meanwhile one batch, for
        at most one cycle's time of latency; a sparse stream, whose rings come after the rest,
        is answered at once. After an empty cycle (cheap, and a ring then means new work) it
        never rests."""
        share = self.config.doorbell_max_busy
        if not claimed or share >= 1:
            return 0.0
        return busy * (1 / share - 1)

    def _wait_for_ring(self, pause: float, rest: float) -> None:
        """Up to `pause` until the next claim, answering a ring once `rest` has passed (rings
        during the rest wait in the socket's buffer and are answered right after it)."""
        if rest > 0:
            time.sleep(min(rest, pause))
            pause -= rest
        if pause > 0 and self._doorbell.wait(pause):
            self._idle_wait = self.config.idle_poll_seconds

    def _lead(self, conn: psycopg.Connection) -> bool:
        """Block until this relay holds the leader lock (True) or is stopped (False). Waits in
        one-second lock waits so that stop() is honoured, and so a leader can see it waiting.
        Without wait_for_lead, tries once and raises RelayBusy if another relay leads."""
        if not self.wait_for_lead:
            if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK_KEY).fetchone()[0]:
                leader = leader_run(conn)
                conn.rollback()
                raise RelayBusy(leader)
            conn.commit()
            self._led()
            return True
        while not self._stopping:
            try:
                conn.execute("SET LOCAL lock_timeout = '1s'")
                conn.execute("SELECT pg_advisory_lock(%s, %s)", LOCK_KEY)
                conn.commit()
                self._led()
                return True
            except psycopg.errors.LockNotAvailable:
                conn.rollback()
        return False

    def _led(self) -> None:
        log.info("relay %s leads (%s mode)", self.run_id, self.mode)
        if self.on_lead:
            self.on_lead()

    def _retire(self, conn: psycopg.Connection, overtime: float) -> bool:
        if overtime < 0:
            return False
        if overtime >= self.config.handover_grace_seconds:
            return True
        waiting = conn.execute(SUCCESSOR_WAITING_SQL, LOCK_KEY).fetchone()[0]
        conn.commit()
        return waiting

    # ------------------------------------------------------------------ one batch

    def _cycle(self, conn: psycopg.Connection) -> tuple[int, _Outcome]:
        cfg = self.config
        rows = conn.execute(CLAIM_SQL, (cfg.batch_size,)).fetchall()
        if not rows:
            conn.commit()
            return 0, _Outcome()
        outcome = self._publish(rows)
        permanent = None
        # Every mark and the commit in one round trip.
        with conn.pipeline():
            if outcome.published:
                mark_published(conn, outcome.published)
            if outcome.permanent:
                ids, errs = zip(*outcome.permanent)
                permanent = conn.execute(MARK_PERMANENT_SQL, {
                    "ids": list(ids), "errs": list(errs), "max": cfg.max_retries,
                    "base": cfg.retry_backoff_seconds, "cap": cfg.retry_backoff_cap_seconds})
            if outcome.transient:
                ids, errs = zip(*outcome.transient)
                conn.execute(MARK_TRANSIENT_SQL, (self._transient_delay(), list(ids), list(errs)))
            conn.commit()
        dead = sum(1 for (d,) in permanent.fetchall() if d) if permanent is not None else 0
        failures = len(outcome.permanent) + len(outcome.transient)
        batch = Totals(published=len(outcome.published), attempts=len(rows) - outcome.held_back,
                       failures=failures, dead_lettered=dead, batches=1)
        self.totals.add(batch)
        self._unflushed.add(batch)
        return len(rows), outcome

    def _publish(self, rows: list[tuple]) -> _Outcome:
        """Produce the batch and wait for every delivery report."""
        producer = self._producer
        produce, poll = producer.produce, producer.poll
        topic = self.config.topic
        reports: list = [None] * len(rows)
        failed_keys: set[str] = set()
        out = _Outcome()
        for i, (_id, event_id, etype, tenant, key, payload, occurred, traceparent) in enumerate(rows):
            if key in failed_keys:
                reports[i] = _HELD_BACK
                out.held_back += 1
                continue
            headers = [("event_id", event_id), ("event_type", etype), ("tenant_id", tenant), ("occurred_at", occurred)]
            if traceparent:
                headers.append(("traceparent", traceparent))

            def report(err, msg, i=i):
                reports[i] = err if err is not None else (msg.partition(), msg.offset())

            while True:
                try:
                    produce(topic, payload, key, on_delivery=report, headers=headers)
                    break
                except BufferError:
                    poll(0.05)
                except KafkaException as exc:
                    reports[i] = exc.args[0]
                    failed_keys.add(key)
                    break
        left = producer.flush(self.config.message_timeout_ms / 1000 + 10)
        for (row_id, *_rest), rep in zip(rows, reports):
            if isinstance(rep, tuple):
                out.published.append((row_id, rep[0], rep[1]))
            elif isinstance(rep, KafkaError):
                entry = (row_id, f"{rep.name()}: {rep.str()}")
                (out.permanent if rep.code() in PERMANENT_ERRORS else out.transient).append(entry)
                out.broken_producer |= rep.fatal()
            elif rep is None:
                out.transient.append((row_id, "no delivery report before the flush deadline"))
        if left:
            out.broken_producer = True
        return out

    # ------------------------------------------------------------------ failures and progress

    def _transient_delay(self) -> float:
        cfg = self.config
        return min(cfg.transient_backoff_cap_seconds, cfg.transient_backoff_seconds * 2 ** self._transient_streak)

    def _back_off(self, conn: psycopg.Connection, outcome: _Outcome) -> None:
        delay = self._transient_delay()
        self._transient_streak += 1
        log.warning("relay: transient failure of %d events (%s); backing off %.1fs", len(outcome.transient),
                    outcome.transient[0][1] if outcome.transient else "producer failed", delay)
        if outcome.broken_producer:
            # A fatal idempotence error, or records still queued: only a new producer (new
            # producer id) is safe to use.
            self._producer = Producer(self.config.producer_config())
        self._beat(conn)
        deadline = time.monotonic() + delay
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, deadline - time.monotonic()))

    def _beat(self, conn: psycopg.Connection) -> None:
        """Heartbeat and the counters since the last beat, in one upsert."""
        u = self._unflushed
        conn.execute(STATUS_SQL, {"relay": RELAY_NAME, "run_id": self.run_id, "mode": self.mode,
                                  "published": u.published, "attempts": u.attempts, "failures": u.failures,
                                  "dead": u.dead_lettered,
                                  "doorbell": Jsonb(self._doorbell.address) if self._doorbell else None})
        conn.commit()
        self._unflushed = Totals()

    def _observe(self, conn: psycopg.Connection) -> None:
        stats = outbox_stats(conn)
        conn.commit()
        self.on_progress(stats, self.totals)


def main(argv: list[str] | None = None) -> int:
    """`python -m aether_platform.relay`: the relay outside Dagster (tests, benchmarks, ops)."""
    p = argparse.ArgumentParser(prog="python -m aether_platform.relay", description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["batch", "streaming"], default="batch")
    p.add_argument("--lifetime", type=float, help="streaming: seconds before handing over")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--run-id", help="names this relay in relay_status and pg_stat_activity (default: cli-<random>)")
    args = p.parse_args(argv)
    logs.configure()
    relay = Relay(RelayConfig.from_env(batch_size=args.batch_size), mode=args.mode,
                  run_id=args.run_id or f"cli-{uuid.uuid4().hex[:8]}")
    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    totals = relay.run(lifetime_seconds=args.lifetime)
    log.info("relay done: %s", totals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
