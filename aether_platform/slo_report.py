"""One SLO's report for one UTC day, read from Prometheus's HTTP API: what the Dagster SLO report
assets record (aether_platform/dagster_defs/slo_reports.py).

Every figure comes from the recordings the generated rules keep (the 5-minute bad and total
events of dashboards_py/rules.py), evaluated at the end of the day, so a report agrees with the
dashboard and the alerts, and a day can be reported (or backfilled) any time while Prometheus
still holds it (35 days, slo_spec.PROMETHEUS_RETENTION):

- attainment: 1 - bad / all events of the day;
- budget spent that day: the day's bad events over the period's allowed bad events
  (budget x all events of the period ending with that day);
- budget remaining at the end of the day, over the period, or over the history there is when
  Prometheus holds less (`history_days` says how much; never silently a shorter window);
- the worst burn rate over the fast page tier's long window (1 h) seen during the day;
- the alerts of this SLO that fired during the day.

Plain Python: httpx and the spec, no Dagster.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import httpx

from aether_platform import slo_spec as spec
from aether_platform.slo_spec import SLO

DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
TIMEOUT_S = 30.0


class PrometheusError(RuntimeError):
    pass


@dataclass(frozen=True)
class Report:
    slo: str
    day: dt.date
    events: float               # all events of the day, as the 5-minute recordings sum them (relative)
    attainment: float | None    # None: no events that day
    budget_spent: float | None  # share of the period's budget the day's bad events used
    budget_remaining: float | None
    history_days: float         # how many days of the period the budget covers (<= 30)
    worst_burn_rate: float | None
    alerts_fired: list[str] = field(default_factory=list)

    @property
    def exhausted(self) -> bool:
        return self.budget_remaining is not None and self.budget_remaining <= 0

    @property
    def budget_window(self) -> str:
        """The window budget_remaining is over, in words: the period, or the history there is."""
        full = spec.PERIOD_HOURS / 24
        if self.history_days >= full:
            return f"the last {full:g} days"
        return f"the last {self.history_days:.1f} days (Prometheus holds less than {full:g})"


class Prometheus:
    def __init__(self, url: str, client: httpx.Client | None = None):
        self.url = url.rstrip("/")
        self._client = client or httpx.Client(timeout=TIMEOUT_S)

    def __enter__(self) -> "Prometheus":
        return self

    def __exit__(self, *exc) -> None:
        self._client.close()

    def query(self, expr: str, at: dt.datetime) -> list[dict]:
        try:
            r = self._client.get(f"{self.url}/api/v1/query", params={"query": expr, "time": at.timestamp()})
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{self.url}: {exc}") from None
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{self.url}: {r.status_code} {body.get('error', r.text[:200])} for {expr}")
        return body["data"]["result"]

    def scalar(self, expr: str, at: dt.datetime) -> float | None:
        result = self.query(expr, at)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if value != value else value   # NaN: no answer


def _sel(slo: SLO) -> str:
    return f'{{slo="{slo.slug}"}}'


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    return start, start + dt.timedelta(days=1)


def report(prom: Prometheus, slo: SLO, day: dt.date) -> Report:
    _, end = day_bounds(day)
    sel, period = _sel(slo), spec.PERIOD
    bad_day = prom.scalar(f"sum_over_time({spec.BAD_RECORD}{sel}[1d])", end) or 0.0
    total_day = prom.scalar(f"sum_over_time({spec.TOTAL_RECORD}{sel}[1d])", end) or 0.0
    total_period = prom.scalar(f"sum_over_time({spec.TOTAL_RECORD}{sel}[{period}])", end)
    bad_period = prom.scalar(f"sum_over_time({spec.BAD_RECORD}{sel}[{period}])", end) or 0.0
    history = prom.scalar(spec.history_days_expr(slo.slug), end) or 0.0
    fast = spec.BURN_TIERS[0].long_window
    worst = prom.scalar(f"max_over_time(({spec.summed_error_ratio(slo.slug, fast)})[1d:{spec.SHORT_WINDOW}]) / {slo.budget}",
                        end)
    fired = prom.query(f'max_over_time(ALERTS{{alertstate="firing",slo="{slo.slug}"}}[1d])', end)
    alerts = sorted({a["metric"]["alertname"] for a in fired})
    allowed = slo.budget * total_period if total_period else None
    return Report(
        slo=slo.slug, day=day, events=total_day,
        attainment=(1 - bad_day / total_day) if total_day else None,
        budget_spent=(bad_day / allowed) if allowed else None,
        budget_remaining=(1 - bad_period / allowed) if allowed else None,
        history_days=round(history, 3), worst_burn_rate=worst, alerts_fired=alerts,
    )
