"""OpenSLO v1 in and out: export validates against the OpenSLO project's schema, export -> import
gives the same spec and the same rules byte for byte (through the CLI), and every malformed or
unsupported document is refused with a message naming the object and the field."""
from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from aether_platform import openslo
from aether_platform import slo_spec as spec
from dashboards_py import build
from tests.conftest import CLI, REPO


def _docs() -> list[dict]:
    return openslo.export_documents()


def _find(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _import(docs: list[dict]) -> openslo.ImportedSpec:
    return openslo.import_documents(openslo.load_documents(openslo.to_yaml(docs)))


def test_export_is_valid_openslo_v1_with_every_kind_asked_for():
    docs = _docs()
    for doc in docs:
        assert openslo.schema_errors(doc) == [], doc["metadata"]["name"]
    kinds = {d["kind"] for d in docs}
    assert {"SLO", "SLI", "AlertPolicy", "AlertCondition"} <= kinds
    slo = _find(docs, "SLO", "api-availability")["spec"]
    assert slo["budgetingMethod"] == "Occurrences" and slo["timeWindow"] == [{"duration": "30d", "isRolling": True}]
    sli = _find(docs, "SLI", slo["indicatorRef"])["spec"]["ratioMetric"]
    assert "{{.window}}" in sli["bad"]["metricSource"]["spec"]["query"]
    fast = _find(docs, "AlertCondition", "burn-1h-5m")["spec"]
    assert fast["condition"] == {"kind": "burnrate", "op": "gt", "threshold": 14.4,
                                 "lookbackWindow": "1h", "alertAfter": "5m"}


def test_the_schema_check_is_real():
    doc = _find(_docs(), "SLO", "relay-publish")
    broken = copy.deepcopy(doc)
    broken["spec"]["objectives"][0]["target"] = 1.5
    del broken["spec"]["budgetingMethod"]
    problems = openslo.schema_errors(broken)
    assert any("target" in p for p in problems) and any("budgetingMethod" in p for p in problems), problems


def test_round_trip_gives_the_same_spec():
    imported = _import(_docs())
    assert imported.slos == spec.SLOS and imported.tiers == spec.BURN_TIERS
    assert imported.policy == spec.ERROR_BUDGET_POLICY


def test_round_trip_through_the_cli_gives_the_same_rules_byte_for_byte(tmp_path):
    exported, rules = tmp_path / "slos.yaml", tmp_path / "rules.yml"
    cli = [*CLI, "slo"]
    r = subprocess.run([*cli, "export", "--out", str(exported)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cli, "import", str(exported), "--rules-out", str(rules)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert rules.read_bytes() == (build.GENERATED / build.RULES).read_bytes()
    # The committed OpenSLO file is the same export, and imports the same way.
    assert openslo.read_file(build.GENERATED / build.OPENSLO).slos == spec.SLOS


def test_good_instead_of_bad_is_accepted_as_total_minus_good():
    docs = _docs()
    ratio = _find(docs, "SLI", "api-availability-events")["spec"]["ratioMetric"]
    ratio["good"] = {"metricSource": {"type": "Prometheus", "spec": {"query": "sum(rate(ok_total[{{.window}}]))"}}}
    del ratio["bad"]
    slo = {s.slug: s for s in _import(docs).slos}["api-availability"]
    assert slo.sli.bad.format(w="5m").endswith("- (sum(rate(ok_total[5m]))))")


def _mutate_slo(doc: dict) -> None:
    doc["spec"]["budgetingMethod"] = "Timeslices"
    doc["spec"]["objectives"][0].update(timeSliceTarget=0.95, timeSliceWindow="1m")


def _calendar(doc: dict) -> None:
    doc["spec"]["timeWindow"] = [{"duration": "1M", "isRolling": False,
                                  "calendar": {"startTime": "2026-01-01 00:00:00", "timeZone": "Europe/Berlin"}}]


def _threshold(doc: dict) -> None:
    doc["spec"] = {"thresholdMetric": {"metricSource": {"type": "Prometheus", "spec": {"query": "up"}}}}


def _datadog(doc: dict) -> None:
    doc["spec"]["ratioMetric"]["total"]["metricSource"]["type"] = "Datadog"


def _no_window(doc: dict) -> None:
    doc["spec"]["ratioMetric"]["bad"]["metricSource"]["spec"]["query"] = "sum(rate(x_total[5m]))"


def _op_lt(doc: dict) -> None:
    doc["spec"]["condition"]["op"] = "lt"


def _dangling(doc: dict) -> None:
    doc["spec"]["indicatorRef"] = "nowhere"


def _weeks(doc: dict) -> None:
    doc["spec"]["condition"]["lookbackWindow"] = "1w"


@pytest.mark.parametrize("kind,name,mutate,expected", [
    ("SLO", "relay-publish", _mutate_slo, "SLO relay-publish: spec.budgetingMethod: 'Timeslices': only Occurrences"),
    ("SLO", "relay-publish", _calendar, "SLO relay-publish: spec.timeWindow[0].isRolling: calendar windows"),
    ("SLO", "relay-publish", _dangling, "SLO relay-publish: spec.indicatorRef: no SLI named 'nowhere'"),
    ("SLI", "relay-publish-events", _threshold, "SLI relay-publish-events: spec.thresholdMetric: threshold SLIs"),
    ("SLI", "relay-publish-events", _datadog,
     "SLI relay-publish-events: spec.ratioMetric.total.metricSource.type: 'Datadog': only Prometheus"),
    ("SLI", "relay-publish-events", _no_window,
     "SLI relay-publish-events: spec.ratioMetric.bad.metricSource.spec.query: must be a PromQL string with the window"),
    ("AlertCondition", "burn-1h-5m", _op_lt, "AlertCondition burn-1h-5m: spec.condition.op: 'lt': only gt"),
    ("AlertCondition", "burn-1h-5m", _weeks,
     "AlertCondition burn-1h-5m: spec.condition.lookbackWindow: '1w': only minutes, hours and days"),
])
def test_unsupported_input_names_object_and_field(kind, name, mutate, expected):
    docs = _docs()
    mutate(_find(docs, kind, name))
    with pytest.raises(openslo.OpenSLOError) as exc:
        _import(docs)
    assert str(exc.value).startswith(expected), str(exc.value)


@pytest.mark.parametrize("text,expected", [
    ("kind: SLO\n  bad: [indent", "input: not YAML"),
    ("- just\n- a list\n", "input: every document must be a mapping"),
    ("apiVersion: openslo/v2alpha\nkind: SLO\nmetadata: {name: x}\nspec: {}\n",
     "SLO x: apiVersion: only openslo/v1 is supported, got 'openslo/v2alpha'"),
    ("apiVersion: openslo/v1\nkind: SLO\nmetadata: {name: x}\nspec: {service: a, objectives: [{target: 2}]}\n",
     "SLO x: not valid OpenSLO v1: "),
    ("apiVersion: openslo/v1\nkind: Widget\nmetadata: {name: x}\nspec: {}\n", "Widget x: not valid OpenSLO v1: "),
    ("", "input: no OpenSLO documents"),
])
def test_malformed_documents_are_refused_clearly(text, expected):
    with pytest.raises(openslo.OpenSLOError) as exc:
        openslo.load_documents(text)
    assert str(exc.value).startswith(expected), str(exc.value)


def test_schema_error_points_at_the_field():
    text = "apiVersion: openslo/v1\nkind: SLO\nmetadata: {name: x}\nspec: {service: a, budgetingMethod: Occurrences, indicatorRef: i, objectives: [{target: 2}]}\n"
    with pytest.raises(openslo.OpenSLOError, match=r"spec\.objectives\.0\.target: 2"):
        openslo.load_documents(text)


def test_cli_import_error_is_one_line_and_nonzero(tmp_path):
    docs = _docs()
    _mutate_slo(_find(docs, "SLO", "relay-publish"))
    f = tmp_path / "timeslices.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    r = subprocess.run([*CLI, "slo", "import", str(f)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "spec.budgetingMethod" in r.stderr


def test_cli_missing_file_and_unwritable_output_are_one_line_errors(tmp_path):
    r = subprocess.run([*CLI, "slo", "import", str(tmp_path / "absent.yaml")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip() == f"aether slo import: {tmp_path / 'absent.yaml'}: No such file or directory"
    r = subprocess.run([*CLI, "slo", "export", "--out", str(tmp_path / "no" / "dir.yaml")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "No such file or directory" in r.stderr


def test_an_unquoted_calendar_start_time_is_read_as_the_schema_expects():
    """`startTime: 2022-01-01 12:00:00`, as OpenSLO's own examples write it, is a string to the
    schema (YAML would make it a timestamp): the calendar window is refused for what it is."""
    docs = _docs()
    text = openslo.to_yaml(docs).replace(
        "  timeWindow:\n  - duration: 30d\n    isRolling: true\n",
        "  timeWindow:\n  - duration: 1M\n    isRolling: false\n    calendar:\n"
        "      startTime: 2022-01-01 12:00:00\n      timeZone: America/New_York\n", 1)
    with pytest.raises(openslo.OpenSLOError, match=r"^SLO relay-heartbeat: spec\.timeWindow\[0\]\.isRolling: calendar"):
        openslo.import_documents(openslo.load_documents(text))
