"""The Kafka topic of CRM events as two assets: the topic itself (materializing it creates it if
missing; its check reports any drift from the declared spec, never fixed silently) and the events
on it (an observed spec fed by the relay).

Why two: the relay needs the topic before it publishes, so for execution the topic is upstream of
the relay (Materialize all provisions it first and never waits for a relay to finish); the data
still reads outbox -> relay -> events on the topic, which is what kafka/crm_events shows."""
import dagster as dg

from aether_platform.dagster_defs.resources import KafkaCluster
from aether_platform.dagster_defs.run_logger import RUN_CONFIG
from aether_platform.topics import declared_topic, describe_topic, drift, ensure_topic

TOPIC_KEY = dg.AssetKey(["kafka", "crm_events_topic"])
EVENTS_KEY = dg.AssetKey(["kafka", "crm_events"])
RELAY_KEY = dg.AssetKey(["outbox_relay"])
# A canceling run may still be working, so it counts as active too.
ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def _state_metadata(state) -> dict:
    return {"topic": state.name, "exists": state.exists, "partitions": state.partitions,
            "replication_factor": state.replication_factor,
            "configs": dg.MetadataValue.json(dict(sorted(state.configs.items())))}


@dg.asset(
    key=TOPIC_KEY,
    group_name="kafka",
    kinds={"kafka"},
    description="The Kafka topic that carries CRM domain events (aetherlink.events unless AETHER_TOPIC says "
                "otherwise). The relay publishes to it, so it is provisioned first. Materializing creates it "
                "with the declared partitions, replication factor and configs when missing; an existing topic "
                "is left as it is and its actual state is recorded as metadata.",
)
def crm_events_topic(kafka: KafkaCluster) -> dg.MaterializeResult:
    spec = declared_topic()
    conn = kafka.client_config()
    result = ensure_topic(conn, spec)
    state = describe_topic(conn, spec.name)
    return dg.MaterializeResult(metadata={"action": result.action, **_state_metadata(state)})


crm_events = dg.AssetSpec(
    EVENTS_KEY,
    group_name="kafka",
    deps=[RELAY_KEY],
    kinds={"kafka"},
    description="The CRM events on the topic, as the outbox relay publishes them (one record per outbox row, "
                "keyed by aggregate, in order per key). Not materialized: each relay run observes it with the "
                "leading run, how many events it published and at what rate.",
)


@dg.asset_check(asset=TOPIC_KEY, name="matches_spec",
                description="Partitions (may grow, never shrink), replication factor and configs as declared.")
def topic_matches_spec(kafka: KafkaCluster) -> dg.AssetCheckResult:
    spec = declared_topic()
    state = describe_topic(kafka.client_config(), spec.name)
    problems = drift(spec, state)
    return dg.AssetCheckResult(passed=not problems,
                               metadata={"drift": dg.MetadataValue.json(problems), **_state_metadata(state)})


provision_topic_job = dg.define_asset_job(
    "provision_kafka_topic", selection=dg.AssetSelection.assets(TOPIC_KEY),
    executor_def=dg.in_process_executor, config=RUN_CONFIG, description="Create the CRM events topic if missing and check its spec.")


@dg.sensor(job=provision_topic_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Provisions the topic when the platform starts: requests the provisioning run while "
                       "the topic asset has never been materialized on this instance.")
def topic_provisioning_sensor(context: dg.SensorEvaluationContext):
    if context.instance.get_latest_materialization_event(TOPIC_KEY) is not None:
        return dg.SkipReason("the topic asset has been materialized; re-run it on demand")
    in_flight = context.instance.get_run_records(
        dg.RunsFilter(job_name=provision_topic_job.name, statuses=ACTIVE), limit=1)
    if in_flight:
        return dg.SkipReason("provisioning run in flight")
    return dg.RunRequest()
