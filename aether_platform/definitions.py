"""Dagster code location: assembles the per-domain definitions. Thin shell over the core.

The asset graph reads as the data flows: crm/outbox_events (CRM database) → outbox_relay →
kafka/crm_events, with kafka/crm_events_topic upstream of the relay because it must exist before
anything publishes (Materialize all provisions it first and never waits behind a relay). Every
sensor and schedule starts RUNNING, so an event written through the API reaches Kafka without a
click: outbox_relay_sensor keeps one relay going,
topic_provisioning_sensor materializes the topic asset once when the instance has never done so
(the stack also ensures the topic on `up`), the expiry schedule prunes idempotency keys, and the
retention schedule retires published outbox rows past retention (crm/outbox_retention).
"""
from __future__ import annotations

import dagster as dg

from aether_platform import logs
from aether_platform.dagster_defs import idempotency_keys, kafka_topic, outbox, outbox_retention, slo_reports
from aether_platform.dagster_defs.resources import CrmDatabase, KafkaCluster, RelayResource
from aether_platform.dagster_defs.run_logger import platform_console
from aether_platform.settings import get_settings

# The code server and every run worker import this module: their own lines (the relay's among
# them) follow AETHER_LOG_FORMAT / AETHER_LOG_LEVEL.
logs.configure()

defs = dg.Definitions(
    assets=[outbox.outbox_events, outbox.outbox_relay, kafka_topic.crm_events_topic, kafka_topic.crm_events,
            idempotency_keys.idempotency_keys, outbox_retention.outbox_retention,
            *slo_reports.slo_report_assets],
    asset_checks=[outbox.oldest_pending_is_young, outbox.no_dead_lettered_events, kafka_topic.topic_matches_spec,
                  outbox_retention.retention_keeps_up],
    jobs=[outbox.relay_streaming_job, outbox.relay_batch_job, outbox.requeue_dead_lettered_events,
          kafka_topic.provision_topic_job, idempotency_keys.expire_keys_job, outbox_retention.retire_outbox_job,
          slo_reports.slo_reports_job],
    sensors=[outbox.outbox_relay_sensor, outbox.outbox_health_sensor, kafka_topic.topic_provisioning_sensor],
    schedules=[idempotency_keys.expire_keys_schedule, outbox_retention.retire_outbox_schedule,
               slo_reports.slo_reports_schedule],
    loggers={"console": platform_console},
    resources={
        "crm_db": CrmDatabase(dsn=dg.EnvVar("DATABASE_URL")),
        # The topic name has a default (aetherlink.events), so it comes from settings, not EnvVar.
        "kafka": KafkaCluster(bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS"), topic=get_settings().topic),
        # Every relay setting has a default, so they are read once here and shown in the UI.
        "relay": RelayResource.from_env(),
        "prometheus": slo_reports.prometheus_resource(),
    },
)
