"""The dashboard JSON as Grafana will import it, and every panel query parsed by Prometheus' own
parser (promtool, which shares it with the server; the end-to-end test runs them on a server)."""
from __future__ import annotations

import copy
import json
import subprocess

import pytest
import yaml

from aether_platform import slo_spec as spec
from dashboards_py import build, dashboard, grafana_check, provisioning
from tests.conftest import required_binary


@pytest.fixture(scope="module")
def board() -> dict:
    return json.loads((build.GENERATED / build.DASHBOARD).read_text())


def _panel(board: dict, title_part: str) -> dict:
    (panel,) = [p for p in board["panels"] if title_part in p["title"]]
    return panel


def test_identity(board):
    assert "SLO" in board["title"] and board["title"] == dashboard.TITLE
    assert board["uid"] == dashboard.UID and board["refresh"] == "10s"


def test_datasource_is_templated(board):
    (var,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert var["name"] == "DS_PROMETHEUS" and var["query"] == "prometheus"
    for p in board["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert all(t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]


def test_four_slo_panels_with_their_targets(board):
    for slo in spec.SLOS:
        panel = _panel(board, f"{slo.id} ·")
        assert panel["targets"][0]["expr"] == slo.headline.record
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0]["value"] is None and steps[1]["value"] == slo.headline.target
    availability = _panel(board, "SLO-3")
    assert [t["expr"] for t in availability["targets"]][1] == spec.SCRAPE_UP_EXPR


@pytest.mark.parametrize("title,tiers", [("Fast burn", spec.FAST_TIERS[:1]), ("Slow burn", spec.FAST_TIERS[1:]),
                                         ("Ticket burn", spec.TICKET_TIERS)])
def test_burn_panels_draw_their_thresholds(board, title, tiers):
    panel = _panel(board, title)
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"
    drawn = [s["value"] for s in defaults["thresholds"]["steps"][1:]]
    assert drawn == sorted(t.factor for t in tiers)
    exprs = {t["expr"] for t in panel["targets"]}
    assert exprs == {spec.burn_rate_record(w) for t in tiers for w in (t.long_window, t.short_window)}


def test_budget_and_firing_alerts_table(board):
    assert _panel(board, "Error budget remaining")["targets"][0]["expr"] == spec.BUDGET_REMAINING_RECORD
    table = _panel(board, "Firing alerts")
    assert table["type"] == "table"
    assert table["targets"][0]["expr"] == 'ALERTS{alertstate="firing"}' and table["targets"][0]["instant"]
    assert not any(p["type"] == "alertlist" for p in board["panels"])


def test_panel_ids_are_unique_and_grid_has_no_overlap(board):
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine


def test_every_panel_expr_parses(board, tmp_path):
    exprs = dashboard.panel_exprs(board)
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": f"panel_target_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]}]}
    f = tmp_path / "panels.yml"
    f.write_text(yaml.safe_dump(rules))
    r = subprocess.run([required_binary("promtool"), "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_provisioning_files():
    root = build.GENERATED / build.PROVISIONING
    ds = yaml.safe_load((root / provisioning.DATASOURCE_FILE).read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    prov = yaml.safe_load((root / provisioning.PROVIDER_FILE).read_text())
    assert prov["providers"][0]["type"] == "file" and prov["providers"][0]["options"]["path"]


def test_valid_against_grafanas_published_dashboard_model(board):
    """The Grafana Foundation SDK's JSON schemas (dashboards_py/grafana_schema): the dashboard,
    every panel's frame, and the timeseries, stat and table options."""
    assert grafana_check.problems(board) == []


def test_the_grafana_check_is_real(board):
    legacy = copy.deepcopy(board)
    legacy["rows"] = []                                             # the pre-7 layout
    legacy["panels"][0]["span"] = 6
    legacy["panels"][0]["options"]["legend"]["displayMode"] = "sideways"
    legacy["panels"][7]["fieldConfig"]["defaults"]["decimals"] = None
    found = "\n".join(grafana_check.problems(legacy))
    for field in ("'rows' was unexpected", "'span' was unexpected", "options.legend.displayMode",
                  "fieldConfig.defaults.decimals"):
        assert field in found, found


def test_modern_schema_version_and_no_point_cap(board):
    assert board["schemaVersion"] == dashboard.SCHEMA_VERSION >= 41
    assert not [p["title"] for p in board["panels"] if "maxDataPoints" in p]


def test_history_panel_says_over_how_many_days(board):
    panel = _panel(board, "Budget over the last N days")
    assert panel["targets"][0]["expr"] == spec.HISTORY_DAYS_RECORD
