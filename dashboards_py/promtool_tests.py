"""promtool unit tests for the generated rules: scenarios with known error ratios, and the
minutes at which the spec's burn tiers must (and must not) fire, computed from the spec.

All scenarios use one sample a minute and 100 events a minute. A long clean baseline precedes
each incident so that every window the asserted alerts read is full of data; a short history
would overstate the long windows' error ratios.
"""
from __future__ import annotations

import math

from aether_platform import slo_spec as spec
from dashboards_py.rules import absent_annotations, burn_annotations

TESTS_FILE = "aether_slo_rules.test.yml"
PERIOD_TESTS_FILE = "aether_slo_period.test.yml"
PERIOD_EVAL = "1h"   # 30+ days at one evaluation a minute would take promtool minutes
PERIOD_TOLERANCE = 0.0015   # relative: one hourly recording in 720 (see period_from_short_windows)
EVENTS_PER_MIN = 100
BASELINE_MIN = int(spec.hours("6h") * 60)   # longest window a page alert reads
MARGIN_MIN = 2                                # rate() sees a change one sample late; stay clear of edges


def counter(*segments: tuple[float, int]) -> str:
    """promtool series notation for a counter growing by `inc` a minute for `n` minutes per segment."""
    (inc, n), *rest = segments
    parts, value = [f"0+{inc:g}x{n}"], inc * n
    for inc, n in rest:
        parts.append(f"{value + inc:g}+{inc:g}x{n - 1}")
        value += inc * n
    return " ".join(parts)


def _onset_minutes(tier: spec.BurnTier, error_ratio: float, budget: float) -> int:
    """Minutes of errors after which the long window's ratio first exceeds the tier's threshold."""
    return math.ceil(tier.factor * budget * spec.hours(tier.long_window) * 60 / error_ratio)


def _alert(tier: spec.BurnTier, slo: spec.SLO) -> dict:
    return {"exp_labels": {"severity": tier.severity, **slo.labels,
                           "long_window": tier.long_window, "short_window": tier.short_window},
            "exp_annotations": burn_annotations(tier, slo.slug)}


def _labels(slo: spec.SLO) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in slo.labels.items()) + "}"


def _expect(alertname: str, at_min: int, alerts: list[dict]) -> dict:
    return {"eval_time": f"{at_min}m", "alertname": alertname, "exp_alerts": alerts}


def _ratio_series(slo: spec.SLO, segments: list[tuple[int, float]]) -> list[dict]:
    """Input series for the availability or relay SLI: segments of (minutes, error ratio)."""
    bad = [(EVENTS_PER_MIN * r, n) for n, r in segments]
    total = [(EVENTS_PER_MIN, n) for n, _ in segments]
    if slo.slug == "api-availability":
        labels = '{route="/api/crm/jobs",method="POST",'
        ok = [(EVENTS_PER_MIN * (1 - r), n) for n, r in segments]
        return [{"series": f'{spec.HTTP_REQUESTS}{labels}status="202"}}', "values": counter(*ok)},
                {"series": f'{spec.HTTP_REQUESTS}{labels}status="503"}}', "values": counter(*bad)}]
    relay = '{relay="outbox-relay"}'
    return [{"series": spec.RELAY_ATTEMPTS + relay, "values": counter(*total)},
            {"series": spec.RELAY_FAILURES + relay, "values": counter(*bad)}]


def fast_burn_spike() -> dict:
    slo, fast, slow = spec.slo("api-availability"), spec.BURN_TIERS[0], spec.BURN_TIERS[1]
    ratio, spike = 0.05, 30
    start = BASELINE_MIN
    onset = start + _onset_minutes(fast, ratio, slo.budget)
    cleared = start + spike + int(spec.hours(fast.short_window) * 60) + MARGIN_MIN
    return {
        "name": (f"a {ratio:.0%} error spike on {slo.slug} pages ({fast.alert}) about "
                 f"{onset - start} min in, and stops once the {fast.short_window} window is clean"),
        "interval": "1m",
        "input_series": _ratio_series(slo, [(start, 0.0), (spike, ratio), (60, 0.0)]),
        "alert_rule_test": [
            _expect(fast.alert, start - 1, []),
            _expect(fast.alert, onset - MARGIN_MIN, []),
            _expect(fast.alert, onset + MARGIN_MIN, [_alert(fast, slo)]),
            _expect(fast.alert, start + spike, [_alert(fast, slo)]),
            _expect(fast.alert, cleared, []),
            # A 30-minute spike is 0.4 % of 6 h: below the slow tier's 0.6 %.
            _expect(slow.alert, start + spike, []),
        ],
        # The long window alone would still be paging: the short window is what resets the alert.
        "promql_expr_test": [{
            "expr": f'{spec.burn_rate_record(fast.long_window)}{{slo="{slo.slug}"}} > bool {fast.factor}',
            "eval_time": f"{cleared}m",
            "exp_samples": [{"labels": _labels(slo), "value": 1}],
        }],
    }


def slow_burn_sustained() -> dict:
    slo, fast, slow = spec.slo("relay-publish"), spec.BURN_TIERS[0], spec.BURN_TIERS[1]
    ratio = 0.01   # 10x burn: above the slow tier, below the fast one
    start = BASELINE_MIN
    onset = start + _onset_minutes(slow, ratio, slo.budget)
    return {
        "name": f"a sustained {ratio:.0%} failure rate on {slo.slug} fires {slow.alert} after about "
                f"{onset - start} min, never {fast.alert}",
        "interval": "1m",
        "input_series": _ratio_series(slo, [(start, 0.0), (onset - start + 10, ratio)]),
        "alert_rule_test": [
            _expect(slow.alert, onset - MARGIN_MIN, []),
            _expect(slow.alert, onset + MARGIN_MIN, [_alert(slow, slo)]),
            _expect(fast.alert, start + 60, []),
            _expect(fast.alert, onset + MARGIN_MIN, []),
        ],
    }


def within_budget_quiet() -> dict:
    slo, ratio = spec.slo("api-availability"), 0.0005
    end = BASELINE_MIN + 120
    checks = [_expect(t.alert, at, []) for t in spec.BURN_TIERS for at in (30, BASELINE_MIN, end)]
    return {
        "name": f"{ratio:.2%} errors, half the budget's rate, fire no burn alert and leave half the budget",
        "interval": "1m",
        "input_series": _ratio_series(slo, [(end, ratio)]),
        "alert_rule_test": checks,
        "promql_expr_test": [{
            # promtool compares floats exactly; rounding keeps the test about the maths.
            "expr": f'round({spec.BUDGET_REMAINING_RECORD}{{slo="{slo.slug}"}}, 0.001)',
            "eval_time": f"{end}m",
            "exp_samples": [{"labels": _labels(slo), "value": 0.5}],
        }],
    }


def heartbeat_stops() -> dict:
    slo, fast = spec.slo("relay-heartbeat"), spec.BURN_TIERS[0]
    stop = 30
    stale_from = stop + spec.HEARTBEAT_MAX_AGE_SECONDS // 60 + 1
    return {
        "name": f"the relay's heartbeat stops at {stop} min: its age passes "
                f"{spec.HEARTBEAT_MAX_AGE_SECONDS} s and {fast.alert} pages within a minute or two",
        "interval": "1m",
        "input_series": [{"series": spec.RELAY_HEARTBEAT + '{relay="outbox-relay"}',
                          "values": f"0+60x{stop} {stop * 60}+0x{stop}"}],
        "alert_rule_test": [
            _expect(fast.alert, stale_from - MARGIN_MIN, []),
            _expect(fast.alert, stale_from + MARGIN_MIN, [_alert(fast, slo)]),
        ],
        "promql_expr_test": [{
            "expr": spec.HEARTBEAT_AGE_RECORD,
            "eval_time": f"{stop + 10}m",
            "exp_samples": [{"labels": spec.HEARTBEAT_AGE_RECORD + _labels(slo), "value": 600}],
        }],
    }


def metric_disappears() -> dict:
    """Every required metric is present, then the heartbeat goes: only its absent alert fires."""
    gone_at, lookback = 30, 5
    for_min = int(spec.hours(spec.ABSENT_FOR) * 60)
    fires_at = gone_at + lookback + for_min + MARGIN_MIN
    series = []
    for slo in spec.SLOS:
        for metric in slo.required_metrics:
            values = f"0+60x{gone_at} _x{fires_at}" if metric == spec.RELAY_HEARTBEAT else f"0+1x{fires_at + gone_at}"
            series.append({"series": metric, "values": values})
    heartbeat = spec.slo("relay-heartbeat")
    return {
        "name": f"{spec.RELAY_HEARTBEAT} vanishes at {gone_at} min: AetherSLOMetricAbsent fires after "
                f"the {lookback} min lookback and {spec.ABSENT_FOR} of pending",
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            _expect("AetherSLOMetricAbsent", gone_at, []),
            _expect("AetherSLOMetricAbsent", fires_at, [{
                "exp_labels": {"severity": "page", **heartbeat.labels, "metric": spec.RELAY_HEARTBEAT},
                "exp_annotations": absent_annotations(heartbeat, spec.RELAY_HEARTBEAT)}]),
        ],
    }


def write_latency_ratio() -> dict:
    """Checks the latency SLI's bucket selector: 5 of 100 writes above 100 ms is a 1x burn."""
    slo = spec.slo("write-latency")
    name = spec.OUTBOX_WRITE_DURATION
    le = {"0.05": 90, str(spec.WRITE_LATENCY_TARGET_SECONDS): 95, "+Inf": 100}
    series = [{"series": f'{name}_bucket{{aggregate="job",le="{b}"}}', "values": f"0+{n}x30"} for b, n in le.items()]
    series.append({"series": f'{name}_count{{aggregate="job"}}', "values": "0+100x30"})
    return {
        "name": "writes with 5 % over 100 ms burn the latency budget at exactly 1x; p95 is 100 ms",
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [
            {"expr": f'round({spec.burn_rate_record("5m")}{{slo="{slo.slug}"}}, 0.001)', "eval_time": "20m",
             "exp_samples": [{"labels": _labels(slo), "value": 1}]},
            {"expr": f"round({slo.headline.record}, 0.001)", "eval_time": "20m",
             "exp_samples": [{"labels": _labels(slo), "value": spec.WRITE_LATENCY_TARGET_SECONDS}]},
        ],
    }


def test_file(rules_path: str) -> dict:
    return {
        "rule_files": [rules_path],
        "evaluation_interval": "1m",
        "tests": [fast_burn_spike(), slow_burn_sustained(), within_budget_quiet(), heartbeat_stops(),
                  metric_disappears(), write_latency_ratio()],
    }


# ---------------------------------------------------------------------------------- the period
# These scenarios span more than the period, so they run in their own file evaluated hourly (the
# input stays one sample a minute, and every segment starts on the hour: the hourly 5-minute
# recordings never straddle two segments).
DAY_MIN = 24 * 60
RELAY = '{relay="outbox-relay"}'


def _direct_ratio(w: str, piece: str = "3d") -> str:
    """The raw-series computation the recordings replace, the reference the tests compare to: the
    relay counters' increase over the whole window, taken in pieces because promtool's engine loads
    at most 10 000 samples at once. Each piece has samples at both ends (ranges are closed in
    Prometheus 2.x), so the pieces add up to the window's increase exactly."""
    n = int(spec.hours(w) / spec.hours(piece))

    def inc(metric: str) -> str:
        return " + ".join(f"increase({metric}{RELAY}[{piece}]" + (f" offset {k * spec.hours(piece):g}h)" if k else ")")
                          for k in range(n))
    return f"sum({inc(spec.RELAY_FAILURES)}) / sum({inc(spec.RELAY_ATTEMPTS)})"


def _round(expr: str, to: float) -> str:
    return f"round({expr}, {to:g})"


def period_from_short_windows() -> dict:
    """31 days with uneven traffic: the 30-day ratio summed from 5-minute recordings agrees with
    the raw ratio (weighted by events, not an average of ratios)."""
    slo = spec.slo("relay-publish")
    segs = [(10, 100, 0.0), (5, 300, 0.002), (16, 100, 0.0005)]   # (days, events/min, error ratio)
    total = counter(*[(per, d * DAY_MIN) for d, per, _ in segs])
    bad = counter(*[(per * r, d * DAY_MIN) for d, per, r in segs])
    end = sum(d for d, _, _ in segs) * DAY_MIN
    # The window (day 1, day 31]: 9 clean days at 100/min, 5 days of 0.2 % at 300/min, 16 of 0.05 %.
    ratio = (5 * 300 * 0.002 + 16 * 100 * 0.0005) / (9 * 100 + 5 * 300 + 16 * 100)
    sel = _labels(slo)
    record = f"{spec.error_ratio_record(spec.PERIOD)}{sel}"
    direct = _direct_ratio(spec.PERIOD)
    return {
        "name": f"a {spec.PERIOD} error ratio summed from {spec.SHORT_WINDOW} recordings agrees with the raw "
                f"{spec.PERIOD} ratio ({ratio:.3%}) on 31 days of uneven traffic",
        "interval": "1m",
        "input_series": [{"series": spec.RELAY_ATTEMPTS + RELAY, "values": total},
                         {"series": spec.RELAY_FAILURES + RELAY, "values": bad}],
        "promql_expr_test": [
            {"expr": _round(direct, 1e-7), "eval_time": f"{end}m",
             "exp_samples": [{"labels": "{}", "value": round(ratio, 7)}]},
            # Within one evaluation's share: Prometheus 2.x ranges are closed, so this window holds
            # 721 hourly recordings, one from the clean day before (at the stack's 30 s, 1 in
            # 86 400). An average of the 5-minute ratios (Sloth's way) would say 0.060 % here.
            {"expr": f"abs({record} / ignoring(slo, team) ({direct}) - 1) < bool {PERIOD_TOLERANCE}",
             "eval_time": f"{end}m", "exp_samples": [{"labels": "{}", "value": 1}]},
            {"expr": f"{spec.HISTORY_DAYS_RECORD}{sel}", "eval_time": f"{end}m",
             "exp_samples": [{"labels": spec.HISTORY_DAYS_RECORD + sel, "value": spec.PERIOD_HOURS // 24}]},
        ],
    }


def period_boundary() -> dict:
    """One bad day, then clean days: it counts while inside the period and not after it left."""
    slo = spec.slo("relay-publish")
    days, ratio = 32, 0.01
    period_min = spec.PERIOD_HOURS * 60
    period_days = spec.PERIOD_HOURS / 24
    sel = _labels(slo)

    def remaining(at_min: int, bad_days: float) -> dict:
        return {"expr": _round(f"{spec.BUDGET_REMAINING_RECORD}{sel}", 1e-6), "eval_time": f"{at_min}m",
                "exp_samples": [{"labels": sel, "value": round(1 - bad_days * ratio / period_days / slo.budget, 6)}]}
    return {
        "name": f"a day of {ratio:.0%} errors spends a third of the budget while inside the {spec.PERIOD} period "
                "and nothing once it has left it",
        "interval": "1m",
        "input_series": [
            {"series": spec.RELAY_ATTEMPTS + RELAY, "values": counter((100, days * DAY_MIN))},
            {"series": spec.RELAY_FAILURES + RELAY, "values": counter((100 * ratio, DAY_MIN), (0, (days - 1) * DAY_MIN))}],
        "promql_expr_test": [
            remaining(period_min, 1), remaining(period_min + DAY_MIN + 60, 0),
            {"expr": _round(_direct_ratio(spec.PERIOD), 1e-7), "eval_time": f"{period_min}m",
             "exp_samples": [{"labels": "{}", "value": round(ratio / period_days, 7)}]},
        ],
    }


def short_history() -> dict:
    """Two days of history: the budget is over those two days (not diluted by 28 empty ones), and
    the covered-days record says so."""
    slo = spec.slo("api-availability")
    ratio, days = 0.0005, 2
    end = days * DAY_MIN
    sel = _labels(slo)
    return {
        "name": f"with {days} days of history the budget covers {days} days, says so, and is not diluted",
        "interval": "1m",
        "input_series": _ratio_series(slo, [(end, ratio)]),
        "promql_expr_test": [
            {"expr": _round(f"{spec.BUDGET_REMAINING_RECORD}{sel}", 1e-6), "eval_time": f"{end}m",
             "exp_samples": [{"labels": sel, "value": round(1 - ratio / slo.budget, 6)}]},
            # The first recording is an hour in (this file evaluates hourly): 47 h = 1.96 days.
            {"expr": _round(f"{spec.HISTORY_DAYS_RECORD}{sel}", 0.1), "eval_time": f"{end}m",
             "exp_samples": [{"labels": sel, "value": days}]},
        ],
    }


def period_test_file(rules_path: str) -> dict:
    return {
        "rule_files": [rules_path],
        "evaluation_interval": PERIOD_EVAL,
        "tests": [period_from_short_windows(), period_boundary(), short_history()],
    }
