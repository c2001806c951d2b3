"""The SLOs of the platform, as plain data: the one source for dashboards_py's Grafana dashboard,
Prometheus rules and promtool tests. Nothing here imports a framework, so any process can read it.

Every SLO is judged the same way, by an error ratio: bad events / all events over a window
(or, for the heartbeat, the fraction of rule evaluations that saw it stale). The error budget
is 1 - objective; burn rate = error ratio / budget, and the burn tiers below are the Google SRE
Workbook's multiwindow, multi-burn-rate alerts for a 30-day period (ch. 5, table 5-8).
"""
from __future__ import annotations

from dataclasses import dataclass

PERIOD = "30d"
PERIOD_HOURS = 30 * 24
# Every Prometheus the project runs keeps the period plus this margin (devstack/stack.py,
# deploy/compose.yaml; tests/slo/test_period.py checks both), so a 30-day budget is 30 days of data
# once the stack has run that long. Before that the rules record how much history the budget covers.
RETENTION_MARGIN_DAYS = 5
PROMETHEUS_RETENTION = f"{PERIOD_HOURS // 24 + RETENTION_MARGIN_DAYS}d"

# Prometheus job that scrapes the API (devstack/prometheus/prometheus.yml.tmpl).
API_JOB = "aether-api"

# Metric names, exported by the API process (api/metrics.py, api/outbox_metrics.py).
HTTP_REQUESTS = "aether_http_requests_total"
OUTBOX_WRITE_DURATION = "aether_outbox_write_duration_seconds"
RELAY_HEARTBEAT = "aether_relay_heartbeat_timestamp_seconds"
RELAY_PUBLISHED = "aether_relay_published_total"
RELAY_ATTEMPTS = "aether_relay_publish_attempts_total"
RELAY_FAILURES = "aether_relay_publish_failures_total"
RELAY_DEAD_LETTERED = "aether_relay_dead_lettered_total"
OUTBOX_PENDING = "aether_outbox_pending_events"
OUTBOX_OLDEST_PENDING_AGE = "aether_outbox_oldest_pending_age_seconds"
OUTBOX_DEAD_LETTERED = "aether_outbox_dead_lettered_events"
OUTBOX_METRICS_UP = "aether_outbox_metrics_up"

# /metrics is the measurement itself: scrapes always succeed and would dilute the API's ratio.
API_REQUESTS = f'{HTTP_REQUESTS}{{route!="/metrics"}}'
API_ERRORS = f'{HTTP_REQUESTS}{{route!="/metrics",status=~"5.."}}'


@dataclass(frozen=True)
class BurnTier:
    alert: str
    severity: str
    factor: float
    long_window: str
    short_window: str

    @property
    def budget_spent(self) -> float:
        """Share of the period's budget gone by the time the long window alone trips."""
        return self.factor * hours(self.long_window) / PERIOD_HOURS


BURN_TIERS = (
    BurnTier("AetherSLOFastBurn", "page", 14.4, "1h", "5m"),    # 2 % of the budget in 1 h
    BurnTier("AetherSLOSlowBurn", "page", 6.0, "6h", "30m"),    # 5 % in 6 h
    BurnTier("AetherSLOBudgetBurn1d", "ticket", 3.0, "1d", "2h"),  # 10 % in 1 d
    BurnTier("AetherSLOBudgetBurn3d", "ticket", 1.0, "3d", "6h"),  # 10 % in 3 d
)
FAST_TIERS = BURN_TIERS[:2]
TICKET_TIERS = BURN_TIERS[2:]

# Windows at least as long as this are evaluated less often and never read raw series: they are
# sums over the 5-minute recordings below (as Sloth derives its period), one series per SLO.
SLOW_RULE_WINDOW_HOURS = 24
SLOW_RULE_INTERVAL = "30s"
SHORT_WINDOW = "5m"
ABSENT_FOR = "5m"

# Where each alert's runbook_url points: docs/slo-runbook.md has one section per SLO slug. A
# repository-relative path, because the platform has no canonical docs host; point it at yours.
RUNBOOK_BASE = "docs/slo-runbook.md"


def hours(window: str) -> float:
    unit = window[-1]
    return float(window[:-1]) * {"m": 1 / 60, "h": 1, "d": 24}[unit]


def burn_windows(tiers: tuple[BurnTier, ...] = BURN_TIERS) -> list[str]:
    """Every window the tiers read, shortest first."""
    ws = {w for t in tiers for w in (t.long_window, t.short_window)}
    return sorted(ws, key=hours)


@dataclass(frozen=True)
class RatioSLI:
    """Counter-based: bad and total are PromQL templates with a `{w}` range placeholder."""
    bad: str
    total: str

    def error_ratio(self, w: str) -> str:
        # `or vector(0)`: a bad-events series that never happened (no 5xx yet) is absent, not 0.
        # clamp_min: no traffic at all spends no budget (0 instead of 0/0 = NaN); an absent
        # total still leaves the ratio absent, so missing metrics stay visible.
        return f"({self.bad.format(w=w)} or vector(0)) / clamp_min({self.total.format(w=w)}, 1e-12)"


@dataclass(frozen=True)
class TimeSLI:
    """Time-based: the share of rule evaluations at which `stale_record` was 1. Its events are the
    evaluations: bad = evaluations that saw it stale, total = evaluations."""
    stale_record: str
    stale_expr: str

    @property
    def bad(self) -> str:
        return f"sum(sum_over_time({self.stale_record}[{{w}}]))"

    @property
    def total(self) -> str:
        return f"sum(count_over_time({self.stale_record}[{{w}}]))"

    def error_ratio(self, w: str) -> str:
        return f"avg_over_time({self.stale_record}[{w}])"


@dataclass(frozen=True)
class Headline:
    """What an SLO panel shows: a recording rule, its target, and which side is good."""
    record: str
    expr: str
    unit: str          # Grafana unit id
    target: float
    good_below: bool   # True: value < target is good
    legend: str


@dataclass(frozen=True)
class SLO:
    id: str
    slug: str          # the `slo` label on every recorded series and alert
    title: str
    objective: float
    sli: RatioSLI | TimeSLI
    headline: Headline
    required_metrics: tuple[str, ...]   # absent() alerts watch these
    description: str
    team: str = "platform"              # routing label on every series and alert of this SLO

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 10)

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_BASE}#{self.slug}"

    @property
    def labels(self) -> dict[str, str]:
        """Labels of every recorded series of this SLO, so alerts inherit them for routing."""
        return {"slo": self.slug, "team": self.team}


@dataclass(frozen=True)
class PolicyStep:
    """One line of the error-budget policy: what the owning team does while at most
    `remaining_below` of the period's budget is left."""
    remaining_below: float
    action: str


# The error-budget policy every SLO is held to (shown on its Dagster report, exported to OpenSLO).
# Checked from the most severe step up; the first whose bound is above the remaining budget applies.
ERROR_BUDGET_POLICY = (
    PolicyStep(0.0, "Budget exhausted: freeze every deploy except fixes for this SLO; the owning team "
                    "writes a postmortem before the freeze lifts."),
    PolicyStep(0.25, "Below 25 % remaining: freeze risky deploys (schema migrations, relay and Kafka "
                     "changes); reliability work comes first in planning."),
    PolicyStep(0.5, "Below 50 % remaining: review the burn in the weekly ops meeting; no action "
                    "required yet."),
)
POLICY_OK = "Within budget: ship as usual."


def policy_action(remaining: float) -> str:
    """The policy step in force with `remaining` (a share of the budget; may be negative)."""
    for step in ERROR_BUDGET_POLICY:
        if remaining <= step.remaining_below:
            return step.action
    return POLICY_OK


def policy_text(policy: tuple[PolicyStep, ...] = ERROR_BUDGET_POLICY) -> str:
    return "\n".join(f"- remaining <= {p.remaining_below:.0%}: {p.action}" for p in policy) + f"\n- otherwise: {POLICY_OK}"


# Recorded series names (Prometheus level:metric:operations convention).
def error_ratio_record(w: str) -> str:
    return f"slo:sli_error:ratio_rate{w}"


def burn_rate_record(w: str) -> str:
    return f"slo:burn_rate:rate{w}"


# The 5-minute amounts every long window is summed from: bad and all events (for the heartbeat,
# stale and all evaluations) in the last 5 minutes, recorded every SLOW_RULE_INTERVAL. The ratio of
# their sums over a window weighs every event alike, as a raw ratio over that window would.
BAD_RECORD = f"slo:sli_bad:increase{SHORT_WINDOW}"
TOTAL_RECORD = f"slo:sli_total:increase{SHORT_WINDOW}"
# How many days of the period the recordings cover: below the period's length, the budget is
# "over the last N days", and every output says so.
HISTORY_DAYS_RECORD = "slo:history:covered_days"
# An hour's resolution is plenty for "N days" and keeps the subquery at 720 lookups per evaluation.
HISTORY_STEP = "1h"


def history_days_expr(slug: str) -> str:
    """Age of the oldest 5-minute recording within the period, in days (to HISTORY_STEP), capped
    at the period: what the rules record and the SLO reports read for any past day. Until the
    subquery's first aligned step sees a recording, the newest recording's own time stands in."""
    total = f'{TOTAL_RECORD}{{slo="{slug}"}}'
    return (f"clamp_max((time() - (min_over_time(timestamp({total})[{PERIOD}:{HISTORY_STEP}]) or timestamp({total})))"
            f" / 86400, {PERIOD_HOURS // 24})")


def summed_error_ratio(slug: str, w: str) -> str:
    """Error ratio over `w` from the 5-minute recordings: never a range over raw series."""
    sel = f'{{slo="{slug}"}}'
    return (f"sum_over_time({BAD_RECORD}{sel}[{w}])"
            f" / clamp_min(sum_over_time({TOTAL_RECORD}{sel}[{w}]), 1e-12)")


BUDGET_REMAINING_RECORD = "slo:error_budget:remaining"
HEARTBEAT_AGE_RECORD = "aether:relay_heartbeat_age_seconds"
HEARTBEAT_STALE_RECORD = "aether:relay_heartbeat_stale"
HEARTBEAT_MAX_AGE_SECONDS = 300
WRITE_LATENCY_TARGET_SECONDS = 0.1   # must be a bucket bound of the write histogram (le="0.1")


def _rate_sum(selector: str) -> str:
    escaped = selector.replace("{", "{{").replace("}", "}}")   # label braces survive .format(w=…)
    return f"sum(rate({escaped}[{{w}}]))"


_relay_sli = RatioSLI(bad=_rate_sum(RELAY_FAILURES), total=_rate_sum(RELAY_ATTEMPTS))
_availability_sli = RatioSLI(bad=_rate_sum(API_ERRORS), total=_rate_sum(API_REQUESTS))
_write_latency_sli = RatioSLI(
    bad=(f"(sum(rate({OUTBOX_WRITE_DURATION}_count[{{w}}]))"
         f' - sum(rate({OUTBOX_WRITE_DURATION}_bucket{{{{le="{WRITE_LATENCY_TARGET_SECONDS}"}}}}[{{w}}])))'),
    total=_rate_sum(f"{OUTBOX_WRITE_DURATION}_count"),
)

SLOS = (
    SLO(
        id="SLO-1", slug="relay-heartbeat", title="Relay heartbeat age", objective=0.999,
        sli=TimeSLI(HEARTBEAT_STALE_RECORD, f"{HEARTBEAT_AGE_RECORD} > bool {HEARTBEAT_MAX_AGE_SECONDS}"),
        headline=Headline(HEARTBEAT_AGE_RECORD, f"time() - max({RELAY_HEARTBEAT})", "s",
                          HEARTBEAT_MAX_AGE_SECONDS, True, "heartbeat age"),
        required_metrics=(RELAY_HEARTBEAT,),
        description="The outbox relay's heartbeat is younger than 300 s in 99.9 % of the time.",
    ),
    SLO(
        id="SLO-2", slug="relay-publish", title="Action failure rate (15 m)", objective=0.999,
        sli=_relay_sli,
        headline=Headline("aether:relay_publish_failure_ratio:rate15m", _relay_sli.error_ratio("15m"),
                          "percentunit", 0.001, True, "failed / attempted publishes"),
        required_metrics=(RELAY_ATTEMPTS, RELAY_FAILURES),
        description="Fewer than 0.1 % of the relay's publish attempts fail.",
    ),
    SLO(
        id="SLO-3", slug="api-availability", title="API availability", objective=0.999,
        sli=_availability_sli,
        headline=Headline("aether:http_availability:ratio_rate5m", f"1 - ({_availability_sli.error_ratio('5m')})",
                          "percentunit", 0.999, False, "non-5xx ratio"),
        required_metrics=(HTTP_REQUESTS,),
        description="More than 99.9 % of API requests (except /metrics) answer without a 5xx.",
    ),
    SLO(
        id="SLO-4", slug="write-latency", title="Write latency p95", objective=0.95,
        sli=_write_latency_sli,
        headline=Headline(
            "aether:outbox_write_duration_seconds:p95_rate5m",
            f"histogram_quantile(0.95, sum by (le) (rate({OUTBOX_WRITE_DURATION}_bucket[5m])))",
            "s", WRITE_LATENCY_TARGET_SECONDS, True, "p95 write"),
        required_metrics=(f"{OUTBOX_WRITE_DURATION}_count",),
        # p95 < 100 ms over the period is the same statement as "at most 5 % of writes take
        # longer than 100 ms", which gives the latency SLO a countable budget like the others.
        description="95 % of business-row + idempotency + outbox commits take under 100 ms.",
    ),
)

# Shown beside availability, never instead of it: 5 m of 5 s scrapes is 60 samples, far too
# coarse to resolve 99.9 %.
SCRAPE_UP_EXPR = f'avg_over_time(up{{job="{API_JOB}"}}[5m])'
FIRING_ALERTS_EXPR = 'ALERTS{alertstate="firing"}'


def slo(slug: str) -> SLO:
    return next(s for s in SLOS if s.slug == slug)
