"""Prometheus recording and alerting rules, derived from the SLO spec.

Per SLO, a fast group (the stack's evaluation interval) records the headline and the error ratio
and burn rate of every window up to 6 h. A slow group (every 30 s) records the bad and all events
of the last 5 minutes, and sums those two series over the 1 d, 3 d and 30 d windows: the longest
windows never scan raw series, which is what made `[30d]` the costliest query of the file. It also
records how many days those recordings cover, so a budget over less than the period says "over
the last N days". The alerts read only recorded series, so one alert per burn tier covers every SLO
through the `slo` label, and routes by the `severity` and `team` labels.
"""
from __future__ import annotations

from aether_platform import slo_spec as spec
from aether_platform.slo_spec import SLO, BurnTier, TimeSLI

RULES_FILE = "aether_slo_rules.yml"


def _record(name: str, expr: str, slo: SLO) -> dict:
    return {"record": name, "expr": expr, "labels": dict(slo.labels)}


def _burn_rule(slo: SLO, w: str) -> dict:
    return _record(spec.burn_rate_record(w), f'{spec.error_ratio_record(w)}{{slo="{slo.slug}"}} / {slo.budget}', slo)


def _window_rules(slo: SLO, windows: list[str]) -> list[dict]:
    rules = []
    for w in windows:
        rules += [_record(spec.error_ratio_record(w), slo.sli.error_ratio(w), slo), _burn_rule(slo, w)]
    return rules


def _slow_rules(slo: SLO, long: list[str]) -> list[dict]:
    w = spec.SHORT_WINDOW
    bad, total = slo.sli.bad.format(w=w), slo.sli.total.format(w=w)
    if not isinstance(slo.sli, TimeSLI):   # rates per second -> events in the window
        secs = int(spec.hours(w) * 3600)
        bad, total = f"({bad}) * {secs}", f"({total}) * {secs}"
    rules = [
        # `or vector(0)`: no bad event yet is zero bad events; no total leaves both absent.
        _record(spec.BAD_RECORD, f"{bad} or vector(0)", slo),
        _record(spec.TOTAL_RECORD, total, slo),
    ]
    for win in long + [spec.PERIOD]:
        rules.append(_record(spec.error_ratio_record(win), spec.summed_error_ratio(slo.slug, win), slo))
        if win != spec.PERIOD:
            rules.append(_burn_rule(slo, win))
    rules.append(_record(spec.BUDGET_REMAINING_RECORD,
                         f'1 - {spec.error_ratio_record(spec.PERIOD)}{{slo="{slo.slug}"}} / {slo.budget}', slo))
    rules.append(_record(spec.HISTORY_DAYS_RECORD, spec.history_days_expr(slo.slug), slo))
    return rules


def _slo_groups(slo: SLO, tiers: tuple[BurnTier, ...]) -> list[dict]:
    windows = spec.burn_windows(tiers)
    short = [w for w in windows if spec.hours(w) < spec.SLOW_RULE_WINDOW_HOURS]
    long = [w for w in windows if spec.hours(w) >= spec.SLOW_RULE_WINDOW_HOURS]
    fast = [_record(slo.headline.record, slo.headline.expr, slo)]
    if isinstance(slo.sli, TimeSLI):
        # Recorded in the same group right after the age, so the stale flag exists per evaluation.
        fast.append(_record(slo.sli.stale_record, slo.sli.stale_expr, slo))
    fast += _window_rules(slo, short)
    return [{"name": f"slo-{slo.slug}", "rules": fast},
            {"name": f"slo-{slo.slug}-long", "interval": spec.SLOW_RULE_INTERVAL, "rules": _slow_rules(slo, long)}]


def burn_alert_expr(tier: BurnTier) -> str:
    return (f"{spec.burn_rate_record(tier.long_window)} > {tier.factor}"
            f" and {spec.burn_rate_record(tier.short_window)} > {tier.factor}")


def burn_annotations(tier: BurnTier, slo: str = "{{ $labels.slo }}") -> dict:
    """`slo` is a template in the rule; promtool tests pass the rendered slug. No $value here, so
    the tests can state the exact annotations."""
    return {
        "summary": f"{slo} burns its error budget at over {tier.factor:g}x ({tier.long_window} and {tier.short_window})",
        "description": f"At this rate {tier.budget_spent:.0%} of the {spec.PERIOD} error budget is gone "
                       f"within {tier.long_window}.",
        "runbook_url": f"{spec.RUNBOOK_BASE}#{slo}",
    }


def _burn_alert(tier: BurnTier) -> dict:
    # severity from the tier; slo and team come from the recorded burn-rate series.
    return {
        "alert": tier.alert,
        "expr": burn_alert_expr(tier),
        "labels": {"severity": tier.severity, "long_window": tier.long_window, "short_window": tier.short_window},
        "annotations": burn_annotations(tier),
    }


def absent_annotations(slo: SLO, metric: str) -> dict:
    return {"summary": f"{metric} is missing: {slo.id} ({slo.title}) cannot be judged",
            "runbook_url": slo.runbook_url}


def _absent_alerts(slos: tuple[SLO, ...]) -> list[dict]:
    alerts = []
    for slo in slos:
        for metric in slo.required_metrics:
            alerts.append({
                "alert": "AetherSLOMetricAbsent",
                "expr": f"absent({metric})",
                "for": spec.ABSENT_FOR,
                "labels": {"severity": "page", **slo.labels, "metric": metric},
                "annotations": absent_annotations(slo, metric),
            })
    return alerts


def rule_groups(slos: tuple[SLO, ...] = spec.SLOS, tiers: tuple[BurnTier, ...] = spec.BURN_TIERS) -> dict:
    """The rule file for these SLOs and tiers (by default the spec's; `aether slo import` passes
    the ones read from OpenSLO)."""
    groups = [g for slo in slos for g in _slo_groups(slo, tiers)]
    groups.append({"name": "slo-alerts", "rules": [_burn_alert(t) for t in tiers] + _absent_alerts(slos)})
    return {"groups": groups}
