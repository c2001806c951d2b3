"""The outbox domain: the CRM outbox table (observed), the relay that publishes it to Kafka (two
jobs, one lane), the sensor that keeps exactly one relay going, the requeue job and the checks."""
import json
import time

import dagster as dg

from aether_platform import relay as core
from aether_platform.dagster_defs.kafka_topic import ACTIVE, EVENTS_KEY, RELAY_KEY, TOPIC_KEY
from aether_platform.outbox_stats import OutboxStats, outbox_stats
from aether_platform.dagster_defs.resources import CrmDatabase, KafkaCluster, RelayResource
from aether_platform.dagster_defs.run_logger import RUN_CONFIG

OUTBOX_KEY = dg.AssetKey(["crm", "outbox_events"])
LANE_TAG, LANE = "aether/lane", "outbox-relay"
MODE_TAG = "aether/relay-mode"
RETIRE_AT_TAG = "aether/relay-retire-at"  # epoch seconds at which a streaming run hands over
ROLE_TAG = "aether/relay-role"  # leader, once the run holds the leader lock; refused, for a manual run
REFUSED_BY_TAG = "aether/relay-refused-by"  # the leading run that a refused manual run left the outbox to

outbox_events = dg.AssetSpec(
    OUTBOX_KEY,
    group_name="crm_database",
    kinds={"postgres"},
    description="outbox_events in the CRM database: one row per domain event, written in the same transaction "
                "as the business change. Observed by the relay runs (every few seconds) and the outbox health "
                "sensor: pending, oldest pending age, dead-lettered.",
)


def stats_metadata(stats: OutboxStats) -> dict:
    return {"pending": stats.pending, "dead_lettered": stats.dead_lettered,
            "oldest_pending_age_seconds": round(stats.oldest_pending_age_seconds or 0.0, 3)}


def _check_evaluations(stats: OutboxStats, relay: RelayResource) -> list[dg.AssetCheckEvaluation]:
    limit = relay.max_pending_age_seconds
    age = stats.oldest_pending_age_seconds or 0.0
    return [
        dg.AssetCheckEvaluation(asset_key=OUTBOX_KEY, check_name="oldest_pending_is_young", passed=age < limit,
                                metadata={**stats_metadata(stats), "threshold_seconds": limit}),
        dg.AssetCheckEvaluation(asset_key=OUTBOX_KEY, check_name="no_dead_lettered_events",
                                passed=stats.dead_lettered == 0, metadata=stats_metadata(stats)),
    ]


def _as_result(evaluation: dg.AssetCheckEvaluation) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=evaluation.passed, metadata=evaluation.metadata)


@dg.asset_check(asset=OUTBOX_KEY, name="oldest_pending_is_young",
                description="The oldest unpublished event is younger than AETHER_OUTBOX_MAX_PENDING_AGE_SECONDS "
                            "(60 s by default).")
def oldest_pending_is_young(crm_db: CrmDatabase, relay: RelayResource) -> dg.AssetCheckResult:
    with crm_db.connect() as conn:
        return _as_result(_check_evaluations(outbox_stats(conn), relay)[0])


@dg.asset_check(asset=OUTBOX_KEY, name="no_dead_lettered_events",
                description="No event sits in the dead-letter state (requeue them once the cause is fixed).")
def no_dead_lettered_events(crm_db: CrmDatabase, relay: RelayResource) -> dg.AssetCheckResult:
    with crm_db.connect() as conn:
        return _as_result(_check_evaluations(outbox_stats(conn), relay)[1])


class RelayRunConfig(dg.Config):
    # Batch by default: a manual materialization (Materialize all) drains the outbox once and
    # exits. The sensor's lane jobs set streaming explicitly.
    mode: str = "batch"
    lifetime_seconds: float = 3600.0
    batch_size: int | None = None


def relay_metadata(run_id: str, mode: str, stats: OutboxStats | None, published: int,
                   seconds: float) -> dict:
    """Who leads, how far behind it is (lag: age of the oldest pending event) and how fast it goes,
    as the asset graph and the run page show them."""
    meta = {"leader_run": dg.MetadataValue.dagster_run(run_id), "mode": mode, "published": published,
            "events_per_second": round(published / seconds, 1) if seconds > 0 else 0.0}
    if stats is not None:
        meta.update({"lag_seconds": round(stats.oldest_pending_age_seconds or 0.0, 3), "pending": stats.pending})
    return meta


@dg.asset(
    key=RELAY_KEY,
    group_name="outbox_relay",
    deps=[OUTBOX_KEY, TOPIC_KEY],
    kinds={"python"},
    output_required=False,
    description="The outbox relay: claims pending outbox rows in id order, produces them to the CRM events topic "
                "(idempotent, acks=all) and marks them published once acknowledged. outbox_relay_sensor keeps one "
                "streaming relay leading (run tag aether/relay-role=leader); it lives for lifetime_seconds, "
                "claiming at once when the API rings its doorbell after a write, otherwise polling (every 10 ms "
                "while events flow, backing off to 100 ms when idle). A manual materialization (e.g. "
                "Materialize all) runs in batch mode: it drains the outbox once and exits, or, while another "
                "run leads, is refused at once (tag aether/relay-refused-by=<leading run>, a warning and an "
                "observation naming that run) without materializing. Relay runs observe this asset every "
                "few seconds with the leading run, its lag (oldest pending event's age) and throughput.",
)
def outbox_relay(context: dg.AssetExecutionContext, config: RelayRunConfig, crm_db: CrmDatabase,
                 kafka: KafkaCluster, relay: RelayResource):
    run_id = context.run.run_id
    # The sensor's runs (one lane) hand over by waiting on the leader lock; any other run
    # (Materialize all, a launchpad run) must never queue behind a leader for its lifetime.
    lane = context.run.tags.get(LANE_TAG) == LANE
    started = time.monotonic()
    last = {"at": started, "published": 0}

    def observe(stats: OutboxStats, totals: core.Totals) -> None:
        now = time.monotonic()
        rate_meta = relay_metadata(run_id, config.mode, stats, totals.published - last["published"], now - last["at"])
        last.update(at=now, published=totals.published)
        context.log_event(dg.AssetObservation(asset_key=OUTBOX_KEY, metadata={
            **stats_metadata(stats), "run_published": totals.published, "run_failed": totals.failures}))
        context.log_event(dg.AssetObservation(asset_key=RELAY_KEY, metadata={
            **rate_meta, "published": totals.published}))
        context.log_event(dg.AssetObservation(asset_key=EVENTS_KEY, metadata={
            "topic": kafka.topic, "leader_run": dg.MetadataValue.dagster_run(run_id),
            "events_per_second": rate_meta["events_per_second"]}))

    def on_lead() -> None:
        context.instance.add_run_tags(run_id, {ROLE_TAG: "leader"})

    cfg = relay.config(crm_db.dsn, kafka.bootstrap_servers, kafka.topic, batch_size=config.batch_size)
    runner = core.Relay(cfg, mode=config.mode, run_id=run_id, on_progress=observe, wait_for_lead=lane,
                       on_lead=on_lead)
    try:
        totals = runner.run(lifetime_seconds=config.lifetime_seconds if config.mode == "streaming" else None)
    except core.RelayBusy as busy:
        message = (f"Not relayed: {busy}, which is already publishing the outbox; this run leaves it to that "
                   "run and exits without materializing outbox_relay.")
        context.instance.add_run_tags(run_id, {ROLE_TAG: "refused", REFUSED_BY_TAG: busy.leader or "unknown"})
        context.log.warning(message)
        with crm_db.connect() as conn:
            stats = outbox_stats(conn)
        context.log_event(dg.AssetObservation(asset_key=RELAY_KEY, metadata={
            "refused_run": dg.MetadataValue.dagster_run(run_id), "reason": message,
            **({"leader_run": dg.MetadataValue.dagster_run(busy.leader)} if busy.leader else {}),
            "lag_seconds": round(stats.oldest_pending_age_seconds or 0.0, 3), "pending": stats.pending}))
        return
    seconds = time.monotonic() - started
    with crm_db.connect() as conn:
        stats = outbox_stats(conn)
    yield dg.MaterializeResult(metadata={
        **relay_metadata(run_id, config.mode, stats, totals.published, seconds),
        "attempts": totals.attempts, "failed": totals.failures, "dead_lettered": totals.dead_lettered,
        "seconds": round(seconds, 1)})


def _relay_job(mode: str):
    return dg.define_asset_job(
        f"outbox_relay_{mode}",
        selection=dg.AssetSelection.assets(RELAY_KEY),
        config={**RUN_CONFIG, "ops": {"outbox_relay": {"config": {"mode": mode}}}},
        executor_def=dg.in_process_executor,
        tags={LANE_TAG: LANE, MODE_TAG: mode},
        description=f"Run the outbox relay in {mode} mode. Launched by outbox_relay_sensor; one lane, one leader.",
    )


relay_streaming_job = _relay_job("streaming")
relay_batch_job = _relay_job("batch")


def relay_decision(mode: str, active: list[dg.RunRecord], now: float, has_work, lifetime: float,
                   handover_lead: float) -> dg.RunRequest | dg.SkipReason:
    """At most one relay relays. A streaming run close to its end of life gets exactly one
    successor, which waits on the leader lock so that the handover has no gap."""
    if mode == "streaming":
        def streaming(**tags: str) -> dg.RunRequest:
            return dg.RunRequest(job_name=relay_streaming_job.name,
                                 tags={RETIRE_AT_TAG: str(int(now + lifetime)), **tags},
                                 run_config={**RUN_CONFIG, "ops": {"outbox_relay": {"config": {
                                     "mode": "streaming", "lifetime_seconds": lifetime}}}})

        if not active:
            return streaming()
        only = active[0].dagster_run
        retire_at = only.tags.get(RETIRE_AT_TAG)
        if (len(active) == 1 and only.status == dg.DagsterRunStatus.STARTED and retire_at
                and float(retire_at) - handover_lead <= now):
            return streaming(**{"aether/relay-successor-of": only.run_id})
        return dg.SkipReason(f"relay run {only.run_id} is active")
    if active:
        return dg.SkipReason(f"relay run {active[0].dagster_run.run_id} is active")
    if not has_work():
        return dg.SkipReason("no pending event is due")
    return dg.RunRequest(job_name=relay_batch_job.name)


def reap_dead_relays(context: dg.SensorEvaluationContext, active: list[dg.RunRecord], live: set[str],
                     dead_after: float, now: float) -> list[dg.RunRecord]:
    """Report relay runs whose worker died as failed, and return the runs still active.

    Why: Dagster's code server fails a run whose worker dies, but if the code server dies with
    it (both killed, a host restart) the run stays STARTED for ever: the default run launcher
    cannot check a worker's health and run monitoring only times out STARTING runs, so the
    sensor would skip "a relay is active" and nothing would be relayed again. A relay run
    is alive while its database session is (relay.live_relay_runs); one missing for `dead_after`
    seconds, across ticks (the cursor remembers since when), is dead. Reporting a live run by
    mistake costs nothing but a successor that waits on the leader lock."""
    missing_since = json.loads(context.cursor) if context.cursor else {}
    still_missing, dead = {}, set()
    for record in active:
        run = record.dagster_run
        if run.status != dg.DagsterRunStatus.STARTED or run.run_id in live:
            continue
        since = float(missing_since.get(run.run_id, now))
        if now - since < dead_after:
            still_missing[run.run_id] = since
            continue
        dead.add(run.run_id)
        context.instance.report_run_failed(
            run, message=f"relay run has had no database session for {now - since:.0f}s: its process is gone "
                         "(killed or crashed); outbox_relay_sensor launches another")
        context.log.warning(f"relay run {run.run_id} is dead (no database session for {now - since:.0f}s)")
    context.update_cursor(json.dumps(still_missing) if still_missing else None)
    return [r for r in active if r.dagster_run.run_id not in dead]


@dg.sensor(jobs=[relay_streaming_job, relay_batch_job], minimum_interval_seconds=5,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Keeps one outbox relay going: the streaming relay (AETHER_RELAY_MODE=streaming, the "
                       "default) relaunched with a handover as each run reaches its lifetime, or batch runs "
                       "whenever a pending event is due. Never launches a relay while one is queued or running, "
                       "except the one successor of a retiring streaming run. A run whose process died (no "
                       "database session for AETHER_RELAY_DEAD_AFTER_SECONDS, default 30) is reported failed "
                       "and replaced.")
def outbox_relay_sensor(context: dg.SensorEvaluationContext, crm_db: CrmDatabase, relay: RelayResource):
    mode = relay.mode
    active = list(context.instance.get_run_records(dg.RunsFilter(tags={LANE_TAG: LANE}, statuses=ACTIVE)))
    now = time.time()
    if any(r.dagster_run.status == dg.DagsterRunStatus.STARTED for r in active) or context.cursor:
        active = reap_dead_relays(context, active, core.live_relay_runs(crm_db.shared_connection()),
                                  relay.dead_after_seconds, now)
    return relay_decision(
        mode, active, now, lambda: core.has_eligible(crm_db.shared_connection()),
        lifetime=relay.lifetime_seconds, handover_lead=relay.handover_lead_seconds)


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Once a minute: observes crm/outbox_events and evaluates its checks, without a run.")
def outbox_health_sensor(context: dg.SensorEvaluationContext, crm_db: CrmDatabase, relay: RelayResource):
    stats = outbox_stats(crm_db.shared_connection())
    return dg.SensorResult(asset_events=[dg.AssetObservation(asset_key=OUTBOX_KEY, metadata=stats_metadata(stats)),
                                         *_check_evaluations(stats, relay)])


class RequeueConfig(dg.Config):
    event_ids: list[str] = []
    all: bool = False


@dg.op(description="Clear the dead-letter state (and the retry count) of the given events, or of all.")
def requeue_dead_letters(context: dg.OpExecutionContext, config: RequeueConfig, crm_db: CrmDatabase) -> int:
    if config.all == bool(config.event_ids):
        raise dg.Failure("give either event_ids or all: true")
    with crm_db.connect() as conn:
        n = core.requeue(conn, None if config.all else config.event_ids)
        stats = outbox_stats(conn)
    context.log_event(dg.AssetObservation(asset_key=OUTBOX_KEY, metadata={**stats_metadata(stats), "requeued": n}))
    return n


@dg.job(executor_def=dg.in_process_executor, config=RUN_CONFIG,
        description="Requeue dead-lettered outbox events once their cause is fixed; the relay then publishes "
                    "them (and the events of their keys that waited behind them) in order.")
def requeue_dead_lettered_events():
    requeue_dead_letters()
