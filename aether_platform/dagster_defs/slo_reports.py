"""The SLO domain in Dagster: one daily-partitioned report asset per SLO of the spec, read from
Prometheus (aether_platform/slo_report.py does the reading; this module only shapes it for Dagster).

Each materialization of a day records attainment, budget spent and remaining, the worst burn
rate and the alerts that fired, plus the error-budget policy step in force; the asset's
definition carries the whole written policy. The check `budget_not_exhausted` runs with every
materialization and fails when no budget is left. A schedule, running by default like every
other, reports each day shortly after it ends; earlier days are a backfill of the partitions from
the UI (Prometheus keeps 35 days, so the last 35 can be reported).
"""

import datetime as dt
import os

import dagster as dg

from aether_platform import slo_report
from aether_platform import slo_spec as spec

CHECK = "budget_not_exhausted"
GROUP = "slo_reports"
# Partitions start where reporting started; a backfill beyond Prometheus's retention reports "no data".
DAILY = dg.DailyPartitionsDefinition(start_date="2026-11-01", timezone="UTC")


class PrometheusApi(dg.ConfigurableResource):
    """Prometheus's HTTP API (PROMETHEUS_URL, default http://127.0.0.1:9090)."""

    url: str

    def client(self) -> slo_report.Prometheus:
        return slo_report.Prometheus(self.url)


def prometheus_resource() -> PrometheusApi:
    return PrometheusApi(url=os.environ.get("PROMETHEUS_URL", slo_report.DEFAULT_PROMETHEUS_URL))


def report_key(slo: spec.SLO) -> dg.AssetKey:
    return dg.AssetKey(["slo", slo.slug, "daily_report"])


def _num(value: float | None) -> dg.MetadataValue:
    return dg.MetadataValue.float(value) if value is not None else dg.MetadataValue.text("no data")


def _report_asset(slo: spec.SLO) -> dg.AssetsDefinition:
    key = report_key(slo)

    @dg.asset(
        key=key, group_name=GROUP, partitions_def=DAILY, kinds={"prometheus"},
        description=f"{slo.id} {slo.title}: {slo.description} One partition per UTC day: attainment, "
                    f"error budget spent that day and remaining over the {spec.PERIOD} period, the worst "
                    f"burn rate, the alerts that fired.",
        owners=[f"team:{slo.team}"],
        metadata={"objective": slo.objective, "team": slo.team, "runbook": slo.runbook_url,
                  "error_budget_policy": dg.MetadataValue.md(spec.policy_text())},
        check_specs=[dg.AssetCheckSpec(CHECK, asset=key, description=(
            f"Fails when {slo.id}'s error budget over the {spec.PERIOD} period is used up at the end of the day; "
            f"the policy then says: {spec.ERROR_BUDGET_POLICY[0].action}"))],
    )
    def _asset(context: dg.AssetExecutionContext, prometheus: PrometheusApi) -> dg.MaterializeResult:
        day = dt.date.fromisoformat(context.partition_key)
        with prometheus.client() as prom:
            r = slo_report.report(prom, slo, day)
        remaining = r.budget_remaining
        action = spec.policy_action(remaining) if remaining is not None else "No data: nothing to act on."
        metadata = {
            "attainment": _num(r.attainment),
            "objective": slo.objective,
            "budget_spent_that_day": _num(r.budget_spent),
            "budget_remaining": _num(remaining),
            "budget_window": r.budget_window,
            "history_days": r.history_days,
            f"worst_burn_rate_{spec.BURN_TIERS[0].long_window}": _num(r.worst_burn_rate),
            "alerts_fired": ", ".join(r.alerts_fired) or "none",
            "policy_in_force": action,
        }
        check = dg.AssetCheckResult(
            check_name=CHECK, passed=not r.exhausted, severity=dg.AssetCheckSeverity.ERROR,
            description=(f"budget exhausted over {r.budget_window}: {action}" if r.exhausted
                         else f"budget remaining over {r.budget_window}"),
            metadata={"budget_remaining": _num(remaining), "history_days": r.history_days},
        )
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    return _asset


slo_report_assets = [_report_asset(s) for s in spec.SLOS]

slo_reports_job = dg.define_asset_job(
    "slo_daily_reports", selection=dg.AssetSelection.groups(GROUP),
    executor_def=dg.in_process_executor, description="Report every SLO for one UTC day.")

# 00:30 UTC: the day has ended and the 30 s rule group has recorded its last minutes.
slo_reports_schedule = dg.build_schedule_from_partitioned_job(
    slo_reports_job, hour_of_day=0, minute_of_hour=30, default_status=dg.DefaultScheduleStatus.RUNNING)
