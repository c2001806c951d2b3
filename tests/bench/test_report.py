"""The benchmark report's judging rules (bench/report.py, bench/__main__.py): pure functions,
no servers. A goal is judged on the median of the rounds, and any counted error fails it."""
from __future__ import annotations

import math
from dataclasses import asdict

from bench.__main__ import aggregate, median_and_range
from bench.report import Figure


def _round(value: float, baseline: float | None = None, errors: int = 0, **goal) -> dict:
    f = Figure("p99", value, "ms", "floor" if baseline is not None else None, baseline, **goal)
    return {"errors": {"timeouts": errors}, "figures": [{**asdict(f), "ratio": f.ratio}]}


def test_goal_is_met_on_the_median_not_the_best_round():
    rounds = [_round(v, goal="<= 50 ms", at_most=50) for v in (10, 60, 70)]
    (row,) = aggregate(rounds)
    assert row["value"] == (60, 10, 70)
    assert row["met"] is False
    rounds = [_round(v, goal="<= 50 ms", at_most=50) for v in (10, 20, 70)]
    assert aggregate(rounds)[0]["met"] is True


def test_ratio_goal_uses_the_median_of_the_rounds_ratios():
    rounds = [_round(v, b, goal="<= 5x floor", at_most=5, on="ratio") for v, b in ((4, 1), (12, 2), (30, 3))]
    (row,) = aggregate(rounds)
    assert row["ratio"] == (6, 4, 10)
    assert row["met"] is False


def test_any_error_in_any_round_fails_every_goal():
    rounds = [_round(1, goal="<= 50 ms", at_most=50), _round(1, errors=1, goal="<= 50 ms", at_most=50),
              _round(1, goal="<= 50 ms", at_most=50)]
    assert aggregate(rounds)[0]["met"] is False


def test_a_missing_baseline_never_meets_a_ratio_goal():
    # A naive capacity of 0 must not become an infinite ratio that reads "met".
    f = Figure("capacity", 1000, "clients", "naive capacity", None, goal=">= 5x naive", at_least=5, on="ratio")
    assert f.judge() is False
    f = Figure("capacity", 1000, "clients", "naive capacity", 0.0, goal=">= 5x naive", at_least=5, on="ratio")
    assert f.judge() is False


def test_an_unmeasured_round_makes_the_figure_unmeasured():
    med, lo, hi = median_and_range([1.0, float("nan"), 3.0])
    assert math.isnan(med) and math.isnan(lo) and math.isnan(hi)
    rounds = [_round(v, goal="<= 50 ms", at_most=50) for v in (1.0, float("nan"), 3.0)]
    assert aggregate(rounds)[0]["met"] is False
