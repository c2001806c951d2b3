"""The Grafana dashboard, built with grafanalib from the SLO spec.

Panels read the recorded series of dashboards_py/rules.py, so a panel and the alert behind it
always agree. The datasource is a dashboard variable (DS_PROMETHEUS), which works the same way
for file provisioning, UI import and the push command.

grafanalib still writes fields of Grafana's pre-7 model (rows, spans, nulls, a 100-point
maxDataPoints on every panel); `modern()` turns its output into Grafana's current dashboard JSON
model at SCHEMA_VERSION, which dashboards_py/grafana_check.py verifies against the schemas Grafana
publishes. With no maxDataPoints, Grafana asks for one point per pixel of the panel's width.
"""
from __future__ import annotations

import json

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    Stat,
    Table,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

from aether_platform import slo_spec as spec

TITLE = "AetherLink — SLOs & error budget"
UID = "aether-slos"
REFRESH = "10s"
DS_VAR = "DS_PROMETHEUS"
DATASOURCE = {"type": "prometheus", "uid": f"${{{DS_VAR}}}"}
DASHBOARD_FILE = "aether-slos.json"
# Grafana 12's dashboard schema version (the compose profile runs grafana/grafana:12.1.1); Grafana
# migrates older versions on load, which is what grafanalib's 12 relied on.
SCHEMA_VERSION = 41

GOOD, WARN, BAD = "green", "orange", "red"


def _target(expr: str, legend: str, ref: str, **kw) -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, datasource=DATASOURCE, **kw)


def _steps(*pairs) -> list[dict]:
    """Grafana threshold steps; the base step's value must be JSON null."""
    return [{"color": c, "value": v} for c, v in pairs]


def _slo_panel(slo: spec.SLO, x: int) -> TimeSeries:
    h = slo.headline
    op = "<" if h.good_below else ">"
    steps = _steps((GOOD, None), (BAD, h.target)) if h.good_below else _steps((BAD, None), (GOOD, h.target))
    targets = [_target(h.record, h.legend, "A")]
    if slo.slug == "api-availability":
        targets.append(_target(spec.SCRAPE_UP_EXPR, "scrape up, 5m (coarse: cannot resolve 99.9 %)", "B"))
    return TimeSeries(
        title=f"{slo.id} · {slo.title} (target {op} {_fmt(h.target, h.unit)})",
        description=slo.description,
        dataSource=DATASOURCE, targets=targets, unit=h.unit,
        thresholds=steps, thresholdsStyleMode="line+area",
        gridPos=GridPos(h=8, w=6, x=x, y=0),
    )


def _fmt(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value * 100:g} %"
    if unit == "s" and value < 1:
        return f"{value * 1000:g} ms"
    return f"{value:g} s"


def _burn_panel(title: str, tiers: tuple[spec.BurnTier, ...], x: int) -> TimeSeries:
    windows = sorted({w for t in tiers for w in (t.long_window, t.short_window)}, key=spec.hours)
    targets = [_target(spec.burn_rate_record(w), f"{{{{slo}}}} · {w}", chr(ord("A") + i))
               for i, w in enumerate(windows)]
    factors = sorted(t.factor for t in tiers)
    colors = [WARN, BAD] if len(factors) > 1 else [BAD]
    rule = "; ".join(f"{t.factor:g}x over {t.long_window} and {t.short_window} ({t.severity})" for t in tiers)
    return TimeSeries(
        title=f"{title}: burn rate = error ratio / (1 - objective)",
        description=f"Alerts fire when both windows of a tier exceed its factor: {rule}.",
        dataSource=DATASOURCE, targets=targets, unit="x",
        thresholds=_steps((GOOD, None), *zip(colors, factors)), thresholdsStyleMode="line",
        gridPos=GridPos(h=8, w=8, x=x, y=8),
    )


def _budget_panel() -> Stat:
    return Stat(
        title=f"Error budget remaining ({spec.PERIOD}, or the days of history beside)",
        description=("1 - error ratio over the period / (1 - objective). Below 0: the budget is overspent. "
                     f"Until Prometheus holds {spec.PERIOD} of recordings, this is the budget over the days it "
                     "holds: see the next panel."),
        dataSource=DATASOURCE,
        targets=[_target(spec.BUDGET_REMAINING_RECORD, "{{slo}}", "A")],
        format="percentunit", reduceCalc="lastNotNull", graphMode="none", textMode="value_and_name",
        thresholds=_steps((BAD, None), (WARN, 0), (GOOD, 0.25)),
        gridPos=GridPos(h=8, w=8, x=0, y=16),
    )


def _history_panel() -> Stat:
    full = spec.PERIOD_HOURS // 24
    return Stat(
        title=f"Budget over the last N days (of {full})",
        description=(f"How many days of the {spec.PERIOD} period the error budget covers: the age of the "
                     f"oldest 5-minute recording, up to {full}. Prometheus keeps {spec.PROMETHEUS_RETENTION}."),
        dataSource=DATASOURCE,
        targets=[_target(spec.HISTORY_DAYS_RECORD, "{{slo}}", "A")],
        format="d", decimals=1, reduceCalc="lastNotNull", graphMode="none", textMode="value_and_name",
        thresholds=_steps((WARN, None), (GOOD, full)),
        gridPos=GridPos(h=8, w=4, x=8, y=16),
    )


def _alerts_panel() -> Table:
    # grafanalib's AlertList writes legacy JSON that current Grafana ignores, and by default it
    # hides Prometheus-evaluated alerts; a table over ALERTS shows exactly what Prometheus fires.
    return Table(
        title="Firing alerts",
        description="Prometheus' ALERTS series: every burn-rate and absent-metric alert now firing.",
        dataSource=DATASOURCE,
        targets=[_target(spec.FIRING_ALERTS_EXPR, "", "A", instant=True, format="table")],
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True, "__name__": True, "alertstate": True}}}],
        gridPos=GridPos(h=8, w=12, x=12, y=16),
    )


def build() -> Dashboard:
    panels = [_slo_panel(s, 6 * i) for i, s in enumerate(spec.SLOS)]
    panels += [_burn_panel("Fast burn (page)", spec.FAST_TIERS[:1], 0),
               _burn_panel("Slow burn (page)", spec.FAST_TIERS[1:], 8),
               _burn_panel("Ticket burn", spec.TICKET_TIERS, 16)]
    panels += [_budget_panel(), _history_panel(), _alerts_panel()]
    return Dashboard(
        title=TITLE, uid=UID, refresh=REFRESH, tags=["aether", "slo"],
        description="Generated by `python -m dashboards_py` from aether_platform/slo_spec.py; do not edit by hand.",
        time=Time("now-3h", "now"), timezone="utc",
        templating=Templating([Template(name=DS_VAR, label="Prometheus", type="datasource", query="prometheus")]),
        panels=panels,
    ).auto_panel_ids()


_LEGACY_DASHBOARD = ("__inputs", "hideControls", "rows", "sharedCrosshair", "style")
_LEGACY_PANEL = ("editable", "error", "height", "minSpan", "span", "maxDataPoints")
_LEGACY_TABLE = ("color", "columns", "fontSize", "mappings")   # pre-7 table; mappings live in fieldConfig
_LEGACY_VARIABLE = ("tagValuesQuery", "tagsQuery", "useTags")
# Options Grafana 12 writes for these panels, at the values it uses when they are missing.
_PANEL_OPTIONS = {
    "stat": {"wideLayout": True, "showPercentChange": False, "percentChangeColorMode": "standard"},
    "table": {"frameIndex": 0},
}


def _no_nulls(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _modern_panel(p: dict) -> dict:
    p = _no_nulls({k: v for k, v in p.items() if k not in _LEGACY_PANEL})
    if p["type"] == "table":
        p = {k: v for k, v in p.items() if k not in _LEGACY_TABLE}
        p["fieldConfig"]["defaults"].setdefault("custom", {}).setdefault("inspect", False)
    if "fieldConfig" in p:
        defaults = p["fieldConfig"]["defaults"] = _no_nulls(p["fieldConfig"].get("defaults", {}))
        if "custom" in defaults:
            defaults["custom"] = _no_nulls(defaults["custom"])
    options = p.setdefault("options", {})
    if "legend" in options:
        options["legend"].setdefault("showLegend", True)
    for key, value in _PANEL_OPTIONS.get(p["type"], {}).items():
        options.setdefault(key, value)
    return p


def _modern_variable(v: dict) -> dict:
    v = _no_nulls({k: val for k, val in v.items() if k not in _LEGACY_VARIABLE})
    if v.get("current", {}).get("value") is None:   # nothing chosen: Grafana picks the default datasource
        v.pop("current", None)
    return v


def modern(data: dict) -> dict:
    """grafanalib's JSON as Grafana's current dashboard model (see the module docstring)."""
    d = _no_nulls({k: v for k, v in data.items() if k not in _LEGACY_DASHBOARD})
    d["graphTooltip"] = 1 if data.get("sharedCrosshair") else d.get("graphTooltip", 0)
    d["schemaVersion"] = SCHEMA_VERSION
    d["timepicker"] = _no_nulls({k: v for k, v in d.get("timepicker", {}).items() if k != "time_options"})
    d["templating"] = {"list": [_modern_variable(v) for v in d["templating"]["list"]]}
    d["panels"] = [_modern_panel(p) for p in d["panels"]]
    return d


def to_json(dashboard: Dashboard) -> str:
    data = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    return json.dumps(modern(data), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def panel_exprs(dashboard_json: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every target: what the tests must see parse and return data."""
    return [(p["title"], t["expr"]) for p in dashboard_json["panels"] for t in p.get("targets", [])]
