"""The idempotency keys domain: the table as an asset, kept small by a scheduled expiry job."""
import dagster as dg

from aether_platform.dagster_defs.resources import CrmDatabase
from aether_platform.dagster_defs.run_logger import RUN_CONFIG
from aether_platform.key_expiry import expire_keys

KEYS_KEY = dg.AssetKey(["crm", "idempotency_keys"])


class ExpiryConfig(dg.Config):
    batch_size: int = 5000
    max_batches: int = 200


@dg.asset(
    key=KEYS_KEY,
    group_name="crm_database",
    kinds={"postgres"},
    description="idempotency_keys in the CRM database: one row per (tenant, Idempotency-Key), replayed until it "
                "expires (24 h by default). Each materialization deletes the expired rows in bounded batches "
                "and records how many it deleted and how many remain.",
)
def idempotency_keys(config: ExpiryConfig, crm_db: CrmDatabase) -> dg.MaterializeResult:
    with crm_db.connect() as conn:
        r = expire_keys(conn, batch_size=config.batch_size, max_batches=config.max_batches)
    return dg.MaterializeResult(metadata={"deleted": r.deleted, "remaining": r.remaining,
                                          "remaining_expired": r.remaining_expired, "batches": r.batches})


expire_keys_job = dg.define_asset_job("expire_idempotency_keys", selection=dg.AssetSelection.assets(KEYS_KEY),
                                      executor_def=dg.in_process_executor, config=RUN_CONFIG,
                                      description="Delete expired idempotency keys in bounded batches.")

expire_keys_schedule = dg.ScheduleDefinition(job=expire_keys_job, cron_schedule="*/15 * * * *",
                                             default_status=dg.DefaultScheduleStatus.RUNNING,
                                             description="Idempotency key expiry, every 15 minutes.")
