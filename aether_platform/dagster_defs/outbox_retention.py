"""Outbox retention in Dagster: an asset that retires published outbox rows past retention (the
core is aether_platform.retention), its schedule, and a check that fails when retention falls
behind. Its defaults come from the environment (AETHER_OUTBOX_RETENTION_*) and show in the
launchpad as run config, so an operator sees what a run will do and can override it once."""
import dagster as dg

from aether_platform import retention as core
from aether_platform.dagster_defs.outbox import OUTBOX_KEY
from aether_platform.dagster_defs.resources import CrmDatabase
from aether_platform.dagster_defs.run_logger import RUN_CONFIG

RETENTION_KEY = dg.AssetKey(["crm", "outbox_retention"])


def _settings() -> tuple[core.RetentionSettings, str | None]:
    """The environment's settings, or the built-in defaults and why the environment's were
    refused. A typo in a retention variable fails the retention runs and check with that reason;
    it must not stop the code location from loading, which would stop the relay too."""
    try:
        return core.RetentionSettings(), None
    except ValueError as exc:
        return core.RetentionSettings.model_construct(), core.settings_error(exc)


def _defaults() -> core.RetentionSettings:
    return _settings()[0]


class RetentionConfig(dg.Config):
    # 0 = off.
    retention_seconds: int = _defaults().retention_seconds or 0
    batch_size: int = _defaults().batch_size
    max_seconds: float = _defaults().max_seconds
    # Between batches: gives the API's and relay's statements the CPU and I/O back.
    pause_seconds: float = 0.0
    # VACUUM (ANALYZE) after a run that deleted rows (AETHER_OUTBOX_RETENTION_VACUUM).
    vacuum: bool = _defaults().vacuum


def _state_metadata(state: core.OutboxState) -> dict:
    return {"rows_left": state.rows, "rows_left_exact": state.rows_exact,
            "rows_past_retention": state.rows_past_retention,
            "table_bytes": state.table_bytes, "index_bytes": state.index_bytes,
            "table_size": dg.MetadataValue.text(_human(state.table_bytes)),
            "index_size": dg.MetadataValue.text(_human(state.index_bytes)),
            "oldest_published_at": dg.MetadataValue.text(state.oldest_published_at or "none"),
            "oldest_published_age_seconds": state.oldest_published_age_seconds or 0.0}


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dg.asset(
    key=RETENTION_KEY,
    group_name="crm_database",
    deps=[OUTBOX_KEY],
    kinds={"postgres"},
    description="Retention of crm/outbox_events: each materialization deletes published rows older than "
                "retention_seconds (AETHER_OUTBOX_RETENTION_SECONDS, 7 days by default like the topic; 0 or "
                "off disables) in batches of batch_size, each its own short SKIP LOCKED transaction. Pending "
                "and dead-lettered rows are never touched; nothing is archived (the topic holds the events "
                "for the same 7 days). Metadata: rows retired, rows left, table and index size, oldest "
                "published row. A run that deleted rows ends with VACUUM (ANALYZE) unless vacuum is false.",
)
def outbox_retention(context: dg.AssetExecutionContext, config: RetentionConfig,
                     crm_db: CrmDatabase) -> dg.MaterializeResult:
    if error := _settings()[1]:
        raise dg.Failure(error)
    with crm_db.connect() as conn:
        r = core.retire_published(conn, config.retention_seconds, batch_size=config.batch_size,
                                  max_seconds=config.max_seconds, pause_seconds=config.pause_seconds)
        vacuum_seconds = core.vacuum(conn) if config.vacuum and r.retired else 0.0
        state = core.outbox_state(conn, config.retention_seconds)
    if not r.finished:
        context.log.warning(f"time budget of {config.max_seconds}s ran out after {r.retired} rows; "
                            "the next run continues")
    return dg.MaterializeResult(metadata={
        "enabled": bool(config.retention_seconds), "retention_seconds": config.retention_seconds,
        "rows_retired": r.retired, "batches": r.batches, "seconds": r.seconds, "finished": r.finished,
        "vacuum_seconds": vacuum_seconds,
        "cutoff": dg.MetadataValue.text(r.cutoff or "retention off"), **_state_metadata(state)})


@dg.asset_check(asset=RETENTION_KEY, name="retention_keeps_up",
                description="No published row is older than retention + AETHER_OUTBOX_RETENTION_SLACK_SECONDS "
                            "(1 h by default). Passes when retention is off.")
def retention_keeps_up(crm_db: CrmDatabase) -> dg.AssetCheckResult:
    s, error = _settings()
    if error:
        return dg.AssetCheckResult(passed=False, metadata={"error": dg.MetadataValue.text(error)})
    with crm_db.connect() as conn:
        behind = core.rows_behind(conn, s.retention_seconds, s.slack_seconds)
        state = core.outbox_state(conn, s.retention_seconds)
    return dg.AssetCheckResult(passed=behind == 0, metadata={
        "rows_past_retention_and_slack": behind, "retention_seconds": s.retention_seconds or 0,
        "slack_seconds": s.slack_seconds, **_state_metadata(state)})


retire_outbox_job = dg.define_asset_job(
    "retire_published_outbox_rows", selection=dg.AssetSelection.assets(RETENTION_KEY),
    executor_def=dg.in_process_executor, config=RUN_CONFIG,
    description="Delete published outbox rows past retention in small batches, then check retention keeps up.")

retire_outbox_schedule = dg.ScheduleDefinition(
    job=retire_outbox_job, cron_schedule="*/15 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Outbox retention, every 15 minutes.")
