"""The default logger of every job in this code location: Dagster's run log lines (step started,
asset materialized, `context.log.*`) go through the platform's logging (aether_platform/logs.py)
instead of Dagster's coloured console logger, so a run's stderr, relay lines included, is one
format: JSON objects carrying run_id, job_name and step_key when AETHER_LOG_FORMAT=json. Dagster's
event log (the UI) is fed by Dagster's own handler and is unaffected."""
from __future__ import annotations

import logging

import dagster as dg

from aether_platform import logs


@dg.logger(config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO",
                                                description="The logger's threshold.")},
           description="Run log lines in the platform's format (AETHER_LOG_FORMAT, AETHER_LOG_LEVEL).")
def platform_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    logs.configure()
    logger = logging.getLogger("aether.dagster.run")
    logger.setLevel(init_context.logger_config["log_level"].upper())
    return logger


# Dagster instantiates a job's loggers only when its run config names them (otherwise it falls
# back to its coloured console logger): every job of the location carries this in its config.
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}
