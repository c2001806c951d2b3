"""OpenSLO v1 in and out: the SLO spec (aether_platform/slo_spec.py) as OpenSLO documents, and
OpenSLO documents back into the same spec the generator (dashboards_py) reads.

Guarantees:
- Export writes, per SLO, an `SLO` and its `SLI` (a ratio metric: bad and total Prometheus
  queries), and, shared by all SLOs, one `AlertCondition` and `AlertPolicy` per burn tier, one
  `AlertNotificationTarget` per severity and the `Service`. Every document validates against
  the OpenSLO v1 JSON schema published by the OpenSLO project (vendored in openslo_schema/).
- Import validates every document against that schema, then maps it onto the spec. Whatever the
  generator cannot honour is refused with an `OpenSLOError` naming the object and the field, never
  silently dropped (see `docs/openslo.md` for what is accepted and what is refused).
- Export then import gives back the spec exactly, so the generated rules are the same bytes.

What OpenSLO has no field for (the SLO's id, the headline panel, the metrics watched by absent()
alerts, the heartbeat's stale flag, the error-budget policy) travels in `metadata.annotations`
under the `aetherlink.io/` prefix; a document without them still imports, with defaults.
Queries carry the window as `{{.window}}`, the placeholder Sloth uses.

Plain Python: no FastAPI, no Dagster.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from aether_platform import slo_spec as spec
from aether_platform.slo_spec import SLO, BurnTier, Headline, PolicyStep, RatioSLI, TimeSLI

API_VERSION = "openslo/v1"
SERVICE = "aetherlink"
ANN = "aetherlink.io/"
WINDOW = "{{.window}}"
METRIC_SOURCE = "Prometheus"
NOTIFICATION_TARGET = "alertmanager"
SCHEMA_DIR = Path(__file__).resolve().parent / "openslo_schema" / "v1"
SCHEMA_BASE = "https://openslo.com/schemas/v1/parts/"
# The schema part that describes each kind's spec (openslo.schema.json picks it by `kind` too;
# choosing it here gives errors that point at a field instead of "no oneOf branch matched").
KIND_PARTS = {"AlertCondition": "alertcondition-spec", "AlertNotificationTarget": "alertnotificationtarget-spec",
              "AlertPolicy": "alertpolicy-spec", "DataSource": "datasource-spec", "Service": "service-spec",
              "SLI": "sli-spec", "SLO": "slo-spec"}


class OpenSLOError(ValueError):
    """Input we cannot read or will not honour; the message names the object and the field."""


@dataclass(frozen=True)
class ImportedSpec:
    slos: tuple[SLO, ...]
    tiers: tuple[BurnTier, ...]
    policy: tuple[PolicyStep, ...]


# ------------------------------------------------------------------------------------- export

def _template_to_query(template: str) -> str:
    return template.format(w=WINDOW)


def _query_to_template(query: str) -> str:
    return query.replace("{", "{{").replace("}", "}}").replace("{{{{.window}}}}", "{w}")


def _condition_name(tier: BurnTier) -> str:
    return f"burn-{tier.long_window}-{tier.short_window}"


def _target_name(severity: str) -> str:
    return f"aether-{severity}"


def _doc(kind: str, name: str, spec_: dict, display: str | None = None, labels: dict | None = None,
         annotations: dict | None = None) -> dict:
    meta: dict = {"name": name}
    if display:
        meta["displayName"] = display
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec_}


def _policy_json(policy: tuple[PolicyStep, ...]) -> str:
    return json.dumps([[p.remaining_below, p.action] for p in policy], ensure_ascii=False)


def _source(query: str) -> dict:
    return {"metricSource": {"type": METRIC_SOURCE, "spec": {"query": query}}}


def _sli_doc(slo: SLO) -> dict:
    time_based = isinstance(slo.sli, TimeSLI)
    ann = {}
    if time_based:
        ann = {ANN + "stale-record": slo.sli.stale_record, ANN + "stale-expr": slo.sli.stale_expr}
    return _doc("SLI", f"{slo.slug}-events", {
        "description": ("Rule evaluations that saw the heartbeat stale / all rule evaluations." if time_based
                        else "Bad events / all events, as Prometheus rates over the window."),
        "ratioMetric": {"counter": not time_based,
                        "bad": _source(_template_to_query(slo.sli.bad)),
                        "total": _source(_template_to_query(slo.sli.total))},
    }, annotations=ann or None)


def _slo_doc(slo: SLO, tiers: tuple[BurnTier, ...], policy: tuple[PolicyStep, ...]) -> dict:
    h = slo.headline
    ann = {
        ANN + "id": slo.id,
        ANN + "runbook-url": slo.runbook_url,
        ANN + "headline-record": h.record,
        ANN + "headline-expr": h.expr,
        ANN + "headline-unit": h.unit,
        ANN + "headline-target": json.dumps(h.target),
        ANN + "headline-good-below": json.dumps(h.good_below),
        ANN + "headline-legend": h.legend,
        ANN + "required-metrics": json.dumps(list(slo.required_metrics)),
        ANN + "error-budget-policy": _policy_json(policy),
    }
    return _doc("SLO", slo.slug, {
        "description": slo.description,
        "service": SERVICE,
        "indicatorRef": f"{slo.slug}-events",
        "timeWindow": [{"duration": spec.PERIOD, "isRolling": True}],
        "budgetingMethod": "Occurrences",
        "objectives": [{"displayName": slo.title, "target": slo.objective}],
        "alertPolicies": [_condition_name(t) for t in tiers],
    }, display=slo.title, labels={"team": slo.team}, annotations=ann)


def export_documents(slos: tuple[SLO, ...] = spec.SLOS, tiers: tuple[BurnTier, ...] = spec.BURN_TIERS,
                     policy: tuple[PolicyStep, ...] = spec.ERROR_BUDGET_POLICY) -> list[dict]:
    docs = [_doc("Service", SERVICE, {"description": "AetherLink event backbone: API, outbox relay, Kafka."})]
    for severity in dict.fromkeys(t.severity for t in tiers):
        docs.append(_doc("AlertNotificationTarget", _target_name(severity), {
            "target": NOTIFICATION_TARGET,
            "description": f"Prometheus Alertmanager, routed on the labels severity={severity} and team."}))
    for t in tiers:
        docs.append(_doc("AlertCondition", _condition_name(t), {
            "description": f"Burn rate over {t.factor:g}x on both {t.long_window} (lookbackWindow) and "
                           f"{t.short_window} (alertAfter): {t.budget_spent:.0%} of the budget in {t.long_window}.",
            "severity": t.severity,
            "condition": {"kind": "burnrate", "op": "gt", "threshold": t.factor,
                          "lookbackWindow": t.long_window, "alertAfter": t.short_window},
        }, display=t.alert))
        docs.append(_doc("AlertPolicy", _condition_name(t), {
            "description": f"{t.alert}: multiwindow burn-rate alert ({t.severity}).",
            "alertWhenNoData": True, "alertWhenResolved": False, "alertWhenBreaching": True,
            "conditions": [{"conditionRef": _condition_name(t)}],
            "notificationTargets": [{"targetRef": _target_name(t.severity)}],
        }, display=t.alert))
    for slo in slos:
        docs += [_sli_doc(slo), _slo_doc(slo, tiers, policy)]
    return docs


def to_yaml(docs: list[dict]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, width=10_000, allow_unicode=True)


# ------------------------------------------------------------------------------------- schema

@lru_cache(maxsize=1)
def _validators() -> dict:
    import jsonschema_rs

    resources = []
    for path in sorted(SCHEMA_DIR.rglob("*.schema.json")):
        doc = json.loads(path.read_text())
        resources.append((doc["$id"], doc))
    registry = jsonschema_rs.Registry(resources)
    general = {"$ref": SCHEMA_BASE + "general.schema.json"}
    return {kind: jsonschema_rs.Draft7Validator({"allOf": [general, {"$ref": f"{SCHEMA_BASE}{part}.schema.json"}]},
                                                registry=registry)
            for kind, part in KIND_PARTS.items()} | {
        None: jsonschema_rs.Draft7Validator(json.loads((SCHEMA_DIR / "openslo.schema.json").read_text()),
                                            registry=registry)}


def _where(doc) -> str:
    if not isinstance(doc, dict):
        return "document"
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    return f"{doc.get('kind', 'document')} {name or '(no name)'}"


def schema_errors(doc) -> list[str]:
    """Every way `doc` breaks the published OpenSLO v1 schema, as "field: problem" lines."""
    validators = _validators()
    kind = doc.get("kind") if isinstance(doc, dict) else None
    errors = list(validators.get(kind, validators[None]).iter_errors(doc))
    if kind in KIND_PARTS and not errors:
        errors = list(validators[None].iter_errors(doc))   # the published top-level schema too
    return [f"{'.'.join(str(p) for p in e.instance_path) or '(document)'}: {e.message}" for e in errors]


def validate(doc) -> None:
    problems = schema_errors(doc)
    if problems:
        raise OpenSLOError(f"{_where(doc)}: not valid OpenSLO v1: " + "; ".join(problems[:5]))


# ------------------------------------------------------------------------------------- import

class _JsonLoader(yaml.SafeLoader):
    """YAML as JSON sees it: `2022-12-01 00:00:00` (a calendar's startTime) stays a string, as
    the schema expects, instead of becoming a datetime."""


_JsonLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load_documents(text: str, source: str = "input") -> list[dict]:
    try:
        docs = [d for d in yaml.load_all(text, Loader=_JsonLoader) if d is not None]
    except yaml.YAMLError as exc:
        raise OpenSLOError(f"{source}: not YAML: {exc}".splitlines()[0]) from None
    if not docs:
        raise OpenSLOError(f"{source}: no OpenSLO documents")
    for doc in docs:
        if not isinstance(doc, dict):
            raise OpenSLOError(f"{source}: every document must be a mapping, got {type(doc).__name__}")
        if doc.get("apiVersion") != API_VERSION:
            raise OpenSLOError(f"{_where(doc)}: apiVersion: only {API_VERSION} is supported, got {doc.get('apiVersion')!r}")
        validate(doc)
    return docs


def _fail(kind: str, name: str, field: str, problem: str) -> OpenSLOError:
    return OpenSLOError(f"{kind} {name}: {field}: {problem}")


def _hours_of(kind: str, name: str, field: str, duration: str) -> str:
    if duration[-1] not in "mhd":
        raise _fail(kind, name, field, f"{duration!r}: only minutes, hours and days (m, h, d) are supported")
    return duration


def _tier(cond: dict) -> BurnTier:
    name, c = cond["metadata"]["name"], cond["spec"]["condition"]
    if c.get("kind") != "burnrate":
        raise _fail("AlertCondition", name, "spec.condition.kind", f"{c.get('kind')!r}: only burnrate is supported")
    if c["op"] != "gt":
        raise _fail("AlertCondition", name, "spec.condition.op", f"{c['op']!r}: only gt (burn rate above threshold)")
    long = _hours_of("AlertCondition", name, "spec.condition.lookbackWindow", c["lookbackWindow"])
    short = _hours_of("AlertCondition", name, "spec.condition.alertAfter", c["alertAfter"])
    if spec.hours(short) >= spec.hours(long):
        raise _fail("AlertCondition", name, "spec.condition.alertAfter",
                    f"{short} must be shorter than lookbackWindow {long} (it is the multiwindow's short window)")
    alert = cond["metadata"].get("displayName") or f"AetherSLOBurn{long}{short}"
    return BurnTier(alert, cond["spec"]["severity"], c["threshold"], long, short)


def _query(kind: str, name: str, field: str, part: dict) -> str:
    src = part["metricSource"]
    if str(src.get("type", "")).lower() != METRIC_SOURCE.lower():
        raise _fail(kind, name, f"{field}.metricSource.type", f"{src.get('type')!r}: only Prometheus is supported")
    query = src["spec"].get("query")
    if not isinstance(query, str) or WINDOW not in query:
        raise _fail(kind, name, f"{field}.metricSource.spec.query",
                    f"must be a PromQL string with the window as {WINDOW}, e.g. sum(rate(errors_total[{WINDOW}]))")
    return _query_to_template(query)


def _sli(doc: dict) -> RatioSLI | TimeSLI:
    name, s = doc["metadata"]["name"], doc["spec"]
    if "thresholdMetric" in s:
        raise _fail("SLI", name, "spec.thresholdMetric", "threshold SLIs are not supported; use a ratioMetric")
    ratio = s["ratioMetric"]
    total = _query("SLI", name, "spec.ratioMetric.total", ratio["total"])
    if "good" in ratio:   # bad = total - good: the generator counts bad events
        good = _query("SLI", name, "spec.ratioMetric.good", ratio["good"])
        bad = f"(({total}) - ({good}))"
    else:
        bad = _query("SLI", name, "spec.ratioMetric.bad", ratio["bad"])
    ann = doc["metadata"].get("annotations") or {}
    if ANN + "stale-record" in ann:
        sli = TimeSLI(ann[ANN + "stale-record"], ann.get(ANN + "stale-expr", ""))
        if (sli.bad, sli.total) != (bad, total):
            raise _fail("SLI", name, "spec.ratioMetric", f"a stale-flag SLI must count {sli.stale_record} evaluations")
        return sli
    return RatioSLI(bad=bad, total=total)


def _ann_json(ann: dict, key: str, default, kind: str, name: str):
    if ANN + key not in ann:
        return default
    try:
        return json.loads(ann[ANN + key])
    except (TypeError, ValueError):
        raise _fail(kind, name, f"metadata.annotations.{ANN}{key}", "must be JSON") from None


def _slo(doc: dict, slis: dict, index: int) -> tuple[SLO, list[str], tuple[PolicyStep, ...]]:
    name, s, meta = doc["metadata"]["name"], doc["spec"], doc["metadata"]
    if s["budgetingMethod"] != "Occurrences":
        raise _fail("SLO", name, "spec.budgetingMethod",
                    f"{s['budgetingMethod']!r}: only Occurrences is supported (timeslice budgeting is not)")
    windows = s.get("timeWindow") or [{"duration": spec.PERIOD, "isRolling": True}]
    if not windows[0].get("isRolling"):
        raise _fail("SLO", name, "spec.timeWindow[0].isRolling", "calendar windows are not supported; use a rolling window")
    if windows[0]["duration"] != spec.PERIOD:
        raise _fail("SLO", name, "spec.timeWindow[0].duration",
                    f"{windows[0]['duration']!r}: only the rolling {spec.PERIOD} period is supported")
    if len(s["objectives"]) != 1:
        raise _fail("SLO", name, "spec.objectives", f"exactly one objective is supported, got {len(s['objectives'])}")
    objective = s["objectives"][0]
    for field in ("op", "value", "timeSliceTarget", "timeSliceWindow"):
        if field in objective:
            raise _fail("SLO", name, f"spec.objectives[0].{field}", "threshold and timeslice objectives are not supported")
    if "indicator" in s:
        sli = _sli({"metadata": s["indicator"]["metadata"], "spec": s["indicator"]["spec"]})
    elif s["indicatorRef"] in slis:
        sli = slis[s["indicatorRef"]]
    else:
        raise _fail("SLO", name, "spec.indicatorRef", f"no SLI named {s['indicatorRef']!r} in the input")
    ann = meta.get("annotations") or {}
    error_ratio = sli.error_ratio("5m")
    headline = Headline(
        record=ann.get(ANN + "headline-record", "slo:headline_error:ratio_rate5m"),
        expr=ann.get(ANN + "headline-expr", error_ratio),
        unit=ann.get(ANN + "headline-unit", "percentunit"),
        target=_ann_json(ann, "headline-target", round(1 - objective["target"], 10), "SLO", name),
        good_below=_ann_json(ann, "headline-good-below", True, "SLO", name),
        legend=ann.get(ANN + "headline-legend", "error ratio (5m)"),
    )
    policy_raw = _ann_json(ann, "error-budget-policy", None, "SLO", name)
    try:
        policy = (spec.ERROR_BUDGET_POLICY if policy_raw is None
                  else tuple(PolicyStep(float(b), str(a)) for b, a in policy_raw))
    except (TypeError, ValueError):
        raise _fail("SLO", name, f"metadata.annotations.{ANN}error-budget-policy",
                    "must be a JSON list of [remaining_below, action]") from None
    slo = SLO(
        id=ann.get(ANN + "id", f"SLO-{index + 1}"), slug=name, title=meta.get("displayName", name),
        objective=objective["target"], sli=sli, headline=headline,
        required_metrics=tuple(_ann_json(ann, "required-metrics", [], "SLO", name)),
        description=s.get("description", ""), team=(meta.get("labels") or {}).get("team", "platform"),
    )
    return slo, list(s.get("alertPolicies") or []), policy


def _policy_tier(doc: dict, conditions: dict) -> BurnTier:
    name, (cond,) = doc["metadata"]["name"], doc["spec"]["conditions"]   # the schema allows exactly one
    if "conditionRef" in cond:
        if cond["conditionRef"] not in conditions:
            raise _fail("AlertPolicy", name, "spec.conditions[0].conditionRef",
                        f"no AlertCondition named {cond['conditionRef']!r} in the input")
        return conditions[cond["conditionRef"]]
    return _tier(cond)


def import_documents(docs: list[dict]) -> ImportedSpec:
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    conditions = {d["metadata"]["name"]: _tier(d) for d in by_kind.get("AlertCondition", [])}
    policies = {d["metadata"]["name"]: _policy_tier(d, conditions) for d in by_kind.get("AlertPolicy", [])}
    slis = {d["metadata"]["name"]: _sli(d) for d in by_kind.get("SLI", [])}
    if not by_kind.get("SLO"):
        raise OpenSLOError("input: no SLO documents")
    slos, tier_names, policy = [], None, None
    for i, doc in enumerate(by_kind["SLO"]):
        slo, refs, slo_policy = _slo(doc, slis, i)
        for ref in refs:
            if ref not in policies:
                raise _fail("SLO", slo.slug, "spec.alertPolicies", f"no AlertPolicy named {ref!r} in the input")
        # The generator writes one alert per burn tier for every SLO, so all SLOs share them.
        if tier_names is not None and refs != tier_names:
            raise _fail("SLO", slo.slug, "spec.alertPolicies",
                        f"{refs} differ from the first SLO's {tier_names}: per-SLO alert policies are not supported")
        if policy is not None and slo_policy != policy:
            raise _fail("SLO", slo.slug, f"metadata.annotations.{ANN}error-budget-policy",
                        "differs from the first SLO's: one error-budget policy covers every SLO")
        tier_names, policy = refs, slo_policy
        slos.append(slo)
    slugs = [s.slug for s in slos]
    if len(set(slugs)) != len(slugs):
        raise OpenSLOError(f"input: SLO names repeat: {slugs}")
    return ImportedSpec(tuple(slos), tuple(policies[n] for n in tier_names), policy)


def read_file(path: Path) -> ImportedSpec:
    try:
        text = path.read_text()
    except OSError as exc:
        raise OpenSLOError(f"{path}: {exc.strerror}") from None
    return import_documents(load_documents(text, str(path)))
