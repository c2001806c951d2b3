"""The SLO report assets against a real Prometheus of this test's own, holding seeded history.

Two UTC days of raw counters are written as OpenMetrics and turned into TSDB blocks by promtool;
the generated rules' 5-minute recordings are then backfilled from them by `promtool tsdb
create-blocks-from rules` (the rules file the stack loads, not a copy), so the reports read the
same series a live Prometheus records. The relay SLO runs at 0.05 % failures (half its budget's
rate); the API fails 1 % of requests on the second day, which spends five times its budget.
Materializing the second day's partition through Dagster must give the attainment within
ATTAINMENT_TOLERANCE, and the API's budget check must fail. The shared Prometheus is left alone.
"""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import dagster as dg
import pytest
import yaml

from aether_platform import slo_spec as spec
from aether_platform.dagster_defs import slo_reports
from dashboards_py import build
from tests.conftest import required_binary
from tests.slo.conftest import OwnPrometheus

pytestmark = [pytest.mark.slow]

# One 1-minute sample of 1441 in the day's closed range comes from the day before (see the
# period tests); 1e-4 covers it and says nothing looser.
ATTAINMENT_TOLERANCE = 1e-4
PER_MIN = 100
RELAY_RATIO, API_RATIO = 0.0005, 0.01
LEAD_MIN = 10   # raw data starts before the first day, so its first 5-minute window is full


def _openmetrics(start: dt.datetime, days: int) -> str:
    """Counters one sample a minute; the API fails only on the last day. Plus one firing alert."""
    t0 = start.timestamp() - LEAD_MIN * 60
    n = days * 24 * 60 + LEAD_MIN
    last_day_from = n - 24 * 60
    api = '{route="/api/crm/jobs",method="POST",'
    series: dict[str, list[tuple[float, float]]] = {k: [] for k in (
        f'{spec.RELAY_ATTEMPTS}{{relay="outbox-relay"}}', f'{spec.RELAY_FAILURES}{{relay="outbox-relay"}}',
        f'{spec.HTTP_REQUESTS}{api}status="202"}}', f'{spec.HTTP_REQUESTS}{api}status="503"}}')}
    keys = list(series)
    attempts = failures = ok = errors = 0.0
    for i in range(n + 1):
        ts = t0 + 60 * i
        if i:
            attempts += PER_MIN
            failures += PER_MIN * RELAY_RATIO
            bad = PER_MIN * API_RATIO if i > last_day_from else 0.0
            ok += PER_MIN - bad
            errors += bad
        for k, v in zip(keys, (attempts, failures, ok, errors)):
            series[k].append((ts, v))
    lines = []
    for family in (spec.RELAY_ATTEMPTS, spec.RELAY_FAILURES, spec.HTTP_REQUESTS):
        lines.append(f"# TYPE {family.removesuffix('_total')} counter")
        for k in keys:
            if k.startswith(family + "{"):
                lines += [f"{k} {v:g} {ts:.0f}" for ts, v in series[k]]
    fired_at = start.timestamp() + (days - 1) * 86400 + 3600
    lines.append("# TYPE ALERTS gauge")
    lines += [f'ALERTS{{alertname="AetherSLOFastBurn",alertstate="firing",severity="page",slo="api-availability"}} 1 '
              f"{fired_at + 60 * i:.0f}" for i in range(30)]
    return "\n".join(lines) + "\n# EOF\n"


def _recording_rules(path) -> None:
    """The 5-minute recordings of the generated rules file, as they are written there."""
    groups = yaml.safe_load((build.GENERATED / build.RULES).read_text())["groups"]
    rules = [r for g in groups for r in g["rules"] if r.get("record") in (spec.BAD_RECORD, spec.TOTAL_RECORD)]
    assert len(rules) == 2 * len(spec.SLOS)
    path.write_text(yaml.safe_dump({"groups": [{"name": "slo-5m", "rules": rules}]}))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slo-reports")
    today = dt.datetime.now(dt.timezone.utc).date()
    days = 2
    first_day = today - dt.timedelta(days=days)
    start, _ = slo_reports.slo_report.day_bounds(first_day)
    end = start + dt.timedelta(days=days)
    (tmp / "seed.om").write_text(_openmetrics(start, days))
    r = subprocess.run([required_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(tmp / "seed.om"), str(tmp / "data")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    prom = OwnPrometheus(tmp, {"global": {"scrape_interval": "1m"}},
                         f"--storage.tsdb.retention.time={spec.PROMETHEUS_RETENTION}").start()
    try:
        _recording_rules(tmp / "rules.yml")
        r = subprocess.run([required_binary("promtool"), "tsdb", "create-blocks-from", "rules", f"--url={prom.url}",
                            f"--start={start.isoformat()}", f"--end={end.isoformat()}", "--eval-interval=60s",
                            f"--output-dir={tmp / 'rule-blocks'}", str(tmp / "rules.yml")],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        prom.stop()
        for block in (tmp / "rule-blocks").iterdir():
            shutil.move(str(block), tmp / "data" / block.name)
        prom.start()
        yield prom, end.date() - dt.timedelta(days=1)
    finally:
        prom.stop()


def _materialize(prom, slo: spec.SLO, day: dt.date):
    asset = next(a for a in slo_reports.slo_report_assets if slo_reports.report_key(slo) in a.keys)
    result = dg.materialize([asset], partition_key=day.isoformat(),
                            resources={"prometheus": slo_reports.PrometheusApi(url=prom.url)}, raise_on_error=False)
    (mat,) = result.asset_materializations_for_node(asset.node_def.name)
    (check,) = result.get_asset_check_evaluations()
    return {k: v.value for k, v in mat.metadata.items()}, check


def test_report_within_budget(seeded):
    prom, day = seeded
    meta, check = _materialize(prom, spec.slo("relay-publish"), day)
    assert abs(meta["attainment"] - (1 - RELAY_RATIO)) < ATTAINMENT_TOLERANCE, meta
    # Two days of history at half the budget's rate: half the budget left, over those two days.
    assert meta["budget_remaining"] == pytest.approx(0.5, abs=0.01), meta
    # History is resolved to the hour (slo_spec.HISTORY_STEP).
    assert meta["history_days"] == pytest.approx(2, abs=1 / 24 + 0.001) and "the last 2.0 days" in meta["budget_window"]
    assert meta["worst_burn_rate_1h"] == pytest.approx(RELAY_RATIO / 0.001, abs=0.01)
    assert meta["alerts_fired"] == "none"
    assert check.passed and check.check_name == slo_reports.CHECK


def test_report_fails_its_check_when_the_budget_is_gone(seeded):
    prom, day = seeded
    slo = spec.slo("api-availability")
    meta, check = _materialize(prom, slo, day)
    assert abs(meta["attainment"] - (1 - API_RATIO)) < ATTAINMENT_TOLERANCE, meta
    # 1 % of the last day's requests over two days of history: 0.5 % errors, five budgets (give or
    # take the boundary's one clean sample in 2 881: 0.002 of a budget each way).
    assert meta["budget_spent_that_day"] == pytest.approx(API_RATIO / 2 / slo.budget, abs=0.02), meta
    assert meta["budget_remaining"] == pytest.approx(1 - API_RATIO / 2 / slo.budget, abs=0.02), meta
    assert meta["worst_burn_rate_1h"] == pytest.approx(API_RATIO / slo.budget, rel=0.01)
    assert meta["alerts_fired"] == "AetherSLOFastBurn"
    assert meta["policy_in_force"] == spec.ERROR_BUDGET_POLICY[0].action
    assert not check.passed and "exhausted" in check.description


def test_a_day_without_data_reports_no_data_and_passes(seeded):
    prom, day = seeded
    meta, check = _materialize(prom, spec.slo("relay-publish"), day - dt.timedelta(days=5))
    assert meta["attainment"] == "no data" and meta["budget_remaining"] == "no data"
    assert check.passed


def test_schedule_is_on_and_partitions_are_daily():
    assert slo_reports.slo_reports_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert isinstance(slo_reports.DAILY, dg.DailyPartitionsDefinition)
    assert {a.key for a in slo_reports.slo_report_assets} == {slo_reports.report_key(s) for s in spec.SLOS}
    for a in slo_reports.slo_report_assets:
        assert "freeze risky deploys" in a.metadata_by_key[a.key]["error_budget_policy"].value


def test_schedule_reports_yesterday_and_every_past_day_is_a_partition(monkeypatch):
    """What the UI's backfill offers: every finished UTC day since the start, as a partition of
    the job the schedule runs; the 00:30 tick asks for the day that just ended."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused/crm")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "unused:9092")
    from aether_platform.definitions import defs

    repo = defs.get_repository_def()
    tick = dt.datetime(2026, 11, 30, 0, 30, tzinfo=dt.timezone.utc)
    run_requests = repo.get_schedule_def("slo_daily_reports_schedule").evaluate_tick(
        dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repo)).run_requests
    assert [(r.job_name, r.partition_key) for r in run_requests] == [("slo_daily_reports", "2026-11-29")]
    keys = repo.get_job("slo_daily_reports").partitions_def.get_partition_keys(current_time=tick)
    assert keys[0] == "2026-11-01" and keys[-1] == "2026-11-29" and len(keys) == 29
