"""Checks a dashboard against Grafana's published dashboard JSON model: the JSON schemas of the
Grafana Foundation SDK (vendored in grafana_schema/, see its README), which the SDK generates from
Grafana's own CUE definitions. Not a hand-written schema: what Grafana says a dashboard is.

The dashboard schema checks every dashboard-level field, each panel's frame, field config and
thresholds, and the variables; the panel plugins' schemas check each panel's `options` and its
`fieldConfig.defaults.custom` for the types they cover (timeseries, stat, table).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

SCHEMAS = Path(__file__).resolve().parent / "grafana_schema"
PANEL_TYPES = ("timeseries", "stat", "table")


@lru_cache(maxsize=None)
def _validator(name: str, definition: str | None = None):
    import jsonschema_rs

    schema = json.loads((SCHEMAS / f"{name}.jsonschema.json").read_text())
    if definition:   # validate against one definition of the file, keeping its other definitions
        schema = {**schema, "$ref": f"#/definitions/{definition}"}
    return jsonschema_rs.Draft7Validator(schema)


def _errors(validator, instance, where: str) -> list[str]:
    return [f"{where}{''.join(f'.{p}' for p in e.instance_path)}: {e.message}" for e in validator.iter_errors(instance)]


def problems(dashboard: dict) -> list[str]:
    # Panels one by one against the Panel definition: the dashboard's list takes panels or rows,
    # and a mismatch there reports only "matches neither", not which field is wrong.
    found = _errors(_validator("dashboard"), {**dashboard, "panels": []}, "dashboard")
    for i, panel in enumerate(dashboard.get("panels", [])):
        found += _errors(_validator("dashboard", "Panel"), panel, f"panels.{i}")
        kind = panel.get("type")
        if kind not in PANEL_TYPES:
            found.append(f"panels.{i}: type {kind!r} has no vendored panel schema")
            continue
        where = f"panels.{i} ({panel.get('title', '')})"
        found += _errors(_validator(kind, "Options"), panel.get("options", {}), f"{where}.options")
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None and "FieldConfig" in json.loads((SCHEMAS / f"{kind}.jsonschema.json").read_text())["definitions"]:
            found += _errors(_validator(kind, "FieldConfig"), custom, f"{where}.fieldConfig.defaults.custom")
    return found
