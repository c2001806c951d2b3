"""Prometheus recording and alerting rules, derived from the SLO spec.

Per SLO, a fast group (the stack's evaluation interval) records the headline and the error ratio
and burn rate of every window up to 6 h; a slow group records the 1 d, 3 d and 30 d windows, which
scan the most samples and barely move between evaluations. The alerts read only recorded series,
so one alert per burn tier covers every SLO through the `slo` label.
"""
from __future__ import annotations

from aether_platform import slo_spec as spec
from aether_platform.slo_spec import SLO, TimeSLI

RULES_FILE = "aether_slo_rules.yml"


def _record(name: str, expr: str, slo: SLO) -> dict:
    return {"record": name, "expr": expr, "labels": {"slo": slo.slug}}


def _window_rules(slo: SLO, windows: list[str], burn: bool) -> list[dict]:
    rules = []
    for w in windows:
        rules.append(_record(spec.error_ratio_record(w), slo.sli.error_ratio(w), slo))
        if burn:
            rules.append(_record(spec.burn_rate_record(w),
                                 f'{spec.error_ratio_record(w)}{{slo="{slo.slug}"}} / {slo.budget}', slo))
    return rules


def _slo_groups(slo: SLO) -> list[dict]:
    short = [w for w in spec.burn_windows() if spec.hours(w) < spec.SLOW_RULE_WINDOW_HOURS]
    long = [w for w in spec.burn_windows() if spec.hours(w) >= spec.SLOW_RULE_WINDOW_HOURS]
    fast = [_record(slo.headline.record, slo.headline.expr, slo)]
    if isinstance(slo.sli, TimeSLI):
        # Recorded in the same group right after the age, so the stale flag exists per evaluation.
        fast.append(_record(slo.sli.stale_record, slo.sli.stale_expr, slo))
    fast += _window_rules(slo, short, burn=True)
    slow = _window_rules(slo, long, burn=True) + _window_rules(slo, [spec.PERIOD], burn=False)
    slow.append(_record(spec.BUDGET_REMAINING_RECORD,
                        f'1 - {spec.error_ratio_record(spec.PERIOD)}{{slo="{slo.slug}"}} / {slo.budget}', slo))
    return [{"name": f"slo-{slo.slug}", "rules": fast},
            {"name": f"slo-{slo.slug}-long", "interval": spec.SLOW_RULE_INTERVAL, "rules": slow}]


def burn_alert_expr(tier: spec.BurnTier) -> str:
    return (f"{spec.burn_rate_record(tier.long_window)} > {tier.factor}"
            f" and {spec.burn_rate_record(tier.short_window)} > {tier.factor}")


def burn_annotations(tier: spec.BurnTier, slo: str = "{{ $labels.slo }}") -> dict:
    """`slo` is a template in the rule; promtool tests pass the rendered slug. No $value here, so
    the tests can state the exact annotations."""
    return {
        "summary": f"{slo} burns its error budget at over {tier.factor:g}x ({tier.long_window} and {tier.short_window})",
        "description": f"At this rate {tier.budget_spent:.0%} of the {spec.PERIOD} error budget is gone "
                       f"within {tier.long_window}.",
    }


def _burn_alert(tier: spec.BurnTier) -> dict:
    return {
        "alert": tier.alert,
        "expr": burn_alert_expr(tier),
        "labels": {"severity": tier.severity, "long_window": tier.long_window, "short_window": tier.short_window},
        "annotations": burn_annotations(tier),
    }


def absent_annotations(slo: SLO, metric: str) -> dict:
    return {"summary": f"{metric} is missing: {slo.id} ({slo.title}) cannot be judged"}


def _absent_alerts() -> list[dict]:
    alerts = []
    for slo in spec.SLOS:
        for metric in slo.required_metrics:
            alerts.append({
                "alert": "AetherSLOMetricAbsent",
                "expr": f"absent({metric})",
                "for": spec.ABSENT_FOR,
                "labels": {"severity": "page", "slo": slo.slug, "metric": metric},
                "annotations": absent_annotations(slo, metric),
            })
    return alerts


def rule_groups() -> dict:
    groups = [g for slo in spec.SLOS for g in _slo_groups(slo)]
    groups.append({"name": "slo-alerts", "rules": [_burn_alert(t) for t in spec.BURN_TIERS] + _absent_alerts()})
    return {"groups": groups}
