"""The concurrency sweep both sides of bench/api_write.py tune with, and the order of its rounds'
two phases: pure functions, no servers."""
from __future__ import annotations

from bench.api_write import mirrored_sweep, round_order


def test_each_setting_is_measured_twice_in_mirrored_order_and_judged_on_its_mean():
    order = []

    def measure(setting):
        order.append(setting)
        return {5: 10.0, 10: 30.0, 20: 20.0}[setting] + len(order)

    best, means = mirrored_sweep([5, 10, 20], measure)
    assert order == [5, 10, 20, 20, 10, 5]
    assert means == {5: (11 + 16) / 2, 10: (32 + 35) / 2, 20: (23 + 24) / 2}
    assert best == 10


def test_a_machine_slowing_down_during_the_sweep_does_not_pick_the_first_setting():
    # Settings equally good; the machine loses 10 % per measurement. A single ascending pass
    # would pick 5 (measured first, fastest); mirrored, every setting averages the same drift.
    order = []

    def measure(setting):
        order.append(setting)
        return 1000 * (1 - 0.1 * (len(order) - 1)) + (1 if setting == 30 else 0)

    best, means = mirrored_sweep([5, 10, 20, 30], measure)
    assert best == 30
    assert max(means.values()) - min(means.values()) < 2


def test_the_side_that_leads_a_round_alternates():
    leads = [round_order(r, "pgbench", "api")[0] for r in range(1, 6)]
    assert leads == ["pgbench", "api", "pgbench", "api", "pgbench"]
    # Both sides run in every round, once each.
    assert all(sorted(round_order(r, "pgbench", "api")) == ["api", "pgbench"] for r in range(1, 6))
