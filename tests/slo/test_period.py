"""The SLO period is honest: the long windows are summed from 5-minute recordings (promtool
scenarios over 31 and 32 days, and 2 days of history), and every Prometheus the project runs keeps
the period plus a margin."""
from __future__ import annotations

import re
import subprocess

import yaml

from aether_platform import slo_spec as spec
from dashboards_py import build
from tests.conftest import REPO, required_binary



def _days(retention: str) -> float:
    return spec.hours(retention) / 24


def test_retention_covers_the_period_plus_margin():
    assert _days(spec.PROMETHEUS_RETENTION) >= spec.PERIOD_HOURS / 24 + spec.RETENTION_MARGIN_DAYS
    from devstack import stack
    assert stack._slo_retention() == spec.PROMETHEUS_RETENTION
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    flags = [a for a in compose["services"]["prometheus"]["command"] if a.startswith("--storage.tsdb.retention.time=")]
    assert flags == [f"--storage.tsdb.retention.time={spec.PROMETHEUS_RETENTION}"]


def test_no_rule_reads_a_long_window_of_raw_series():
    """Windows of a day or more may only range over the recordings (slo:… series)."""
    groups = yaml.safe_load((build.GENERATED / build.RULES).read_text())["groups"]
    long = [w for w in spec.burn_windows() + [spec.PERIOD] if spec.hours(w) >= spec.SLOW_RULE_WINDOW_HOURS]
    for g in groups:
        for rule in g["rules"]:
            for w in long:
                for m in re.finditer(rf"([A-Za-z_:][\w:]*)(\{{[^}}]*\}})?\[{w}\]", rule["expr"]):
                    assert m.group(1).startswith("slo:"), (rule.get("record") or rule.get("alert"), m.group(0))


def test_period_scenarios_pass():
    tests = build.GENERATED / build.PERIOD_TESTS
    names = [t["name"] for t in yaml.safe_load(tests.read_text())["tests"]]
    assert len(names) == 3 and any("agrees with the raw" in n for n in names)
    r = subprocess.run([required_binary("promtool"), "test", "rules", str(tests)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
