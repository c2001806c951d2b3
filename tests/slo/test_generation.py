"""The generated outputs: deterministic, committed fresh, accepted by promtool, and the rules'
own unit tests (the burn-rate scenarios of dashboards_py/promtool_tests.py) pass."""
from __future__ import annotations

import shutil
import subprocess
import sys

import yaml

from dashboards_py import build
from tests.conftest import CLI, REPO, required_binary



def test_generation_is_deterministic():
    assert build.outputs() == build.outputs()


def test_committed_outputs_are_fresh():
    problems = build.stale()
    assert not problems, "run `python -m dashboards_py` and commit: " + "; ".join(problems)


def test_check_flags_an_edited_output(tmp_path):
    build.write(tmp_path)
    assert build.stale(tmp_path) == []
    (tmp_path / build.DASHBOARD).write_text("{}")
    (tmp_path / "prometheus" / "old.yml").write_text("groups: []\n")
    assert build.stale(tmp_path) == [f"out of date: {build.DASHBOARD}", "not generated (delete it): prometheus/old.yml"]


def test_check_command_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "dashboards_py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    via_cli = subprocess.run([*CLI, "dashboards", "check"], cwd=REPO,
                             capture_output=True, text=True)
    assert via_cli.returncode == 0, via_cli.stderr


def test_check_command_fails_on_a_stale_file(tmp_path):
    """`python -m dashboards_py --check` (what `aether dashboards check` runs) on a copy of the
    generator whose committed OpenSLO export was edited by hand."""
    for pkg in ("dashboards_py", "aether_platform"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    stale_file = tmp_path / "dashboards_py" / "generated" / build.OPENSLO
    stale_file.write_text(stale_file.read_text().replace("target: 0.999", "target: 0.99", 1))
    r = subprocess.run([sys.executable, "-m", "dashboards_py", "--check"], cwd=tmp_path, capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"out of date: {build.OPENSLO}" in r.stderr


def test_promtool_check_rules():
    r = subprocess.run([required_binary("promtool"), "check", "rules", str(build.GENERATED / build.RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_unit_tests_pass():
    """Fast burn on a 5 % spike and its reset, slow burn on 1 %, silence at 0.05 %, the heartbeat
    page, the absent alert and the latency SLI's bucket: see the test names in the file."""
    tests = build.GENERATED / build.PROMTOOL_TESTS
    names = [t["name"] for t in yaml.safe_load(tests.read_text())["tests"]]
    assert any("5% error spike" in n for n in names) and any("0.05% errors" in n for n in names)
    r = subprocess.run([required_binary("promtool"), "test", "rules", str(tests)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_rule_is_labelled_with_its_slo():
    groups = yaml.safe_load((build.GENERATED / build.RULES).read_text())["groups"]
    for g in groups:
        for rule in g["rules"]:
            if "record" in rule:
                assert rule["labels"]["slo"], rule
            else:
                assert rule["labels"]["severity"] in ("page", "ticket"), rule
