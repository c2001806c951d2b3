"""The streaming relay's claim timing (Relay._pause): fast while events flow, backing off while
idle, snapping back on the first row found. Pure: no servers, no clocks."""
from __future__ import annotations

from aether_platform.relay import Relay, RelayConfig


def _relay(**tunables) -> Relay:
    cfg = RelayConfig(dsn="postgresql://unused/x", bootstrap="unused:9092", topic="t", batch_size=500, max_retries=5,
                      **tunables)
    return Relay(cfg, mode="streaming")


def test_empty_claims_back_off_to_the_cap_and_a_found_row_snaps_back():
    relay = _relay(AETHER_RELAY_IDLE_POLL_SECONDS=0.01, AETHER_RELAY_IDLE_POLL_MAX_SECONDS=0.1)
    assert relay._pause(3) == 0.01  # events flowing: the fast interval
    idle = [relay._pause(0) for _ in range(6)]
    assert idle == [0.02, 0.04, 0.08, 0.1, 0.1, 0.1]
    assert relay._pause(1) == 0.01  # the first row found: fast again at once
    assert relay._pause(0) == 0.02


def test_a_zero_fast_interval_still_backs_off_when_idle():
    # AETHER_RELAY_IDLE_POLL_SECONDS=0 (claim at once while events flow) must not make an idle
    # relay spin on empty claims.
    relay = _relay(AETHER_RELAY_IDLE_POLL_SECONDS=0.0, AETHER_RELAY_IDLE_POLL_MAX_SECONDS=0.1)
    assert relay._pause(2) == 0.0
    waits = [relay._pause(0) for _ in range(12)]
    assert waits[0] > 0 and waits == sorted(waits) and waits[-1] == 0.1


def test_a_cap_below_the_fast_interval_wins():
    relay = _relay(AETHER_RELAY_IDLE_POLL_SECONDS=0.05, AETHER_RELAY_IDLE_POLL_MAX_SECONDS=0.02)
    assert [relay._pause(0) for _ in range(3)] == [0.02, 0.02, 0.02]


def test_a_rung_relay_rests_in_proportion_to_its_last_cycle():
    # doorbell_max_busy 0.5: after a 2 ms cycle that found rows, rings wait 2 ms; 0.25: 6 ms.
    relay = _relay(AETHER_RELAY_DOORBELL_MAX_BUSY=0.5)
    assert relay._rest(3, 0.002) == 0.002
    assert relay._rest(0, 0.002) == 0.0  # an empty cycle: a ring means new work, answer it at once
    assert _relay(AETHER_RELAY_DOORBELL_MAX_BUSY=0.25)._rest(1, 0.002) == 0.006
    assert _relay(AETHER_RELAY_DOORBELL_MAX_BUSY=1.0)._rest(500, 0.05) == 0.0
