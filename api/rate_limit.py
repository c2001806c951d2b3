"""Per-tenant token buckets for writes, in one process.

Each API process keeps its own buckets, so with N uvicorn workers a tenant may reach N times
the rate; the limit exists to stop one tenant from starving the others on a process, not to bill.
"""
from __future__ import annotations

import time
from collections import OrderedDict


class TenantRateLimiter:
    def __init__(self, rate_per_second: float, burst: int, max_tenants: int = 100_000):
        self.rate = rate_per_second
        self.burst = float(burst)
        self.max_tenants = max_tenants
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, tenant, now: float | None = None) -> float:
        """Take one token. Returns 0 when allowed, else the seconds until a token is available."""
        if not self.enabled:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(tenant, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[tenant] = (tokens - 1, now)
            wait = 0.0
        else:
            self._buckets[tenant] = (tokens, now)
            wait = (1 - tokens) / self.rate
        # Bounded memory: forget the least recently seen tenants (their buckets are full anyway
        # after a second or two of silence).
        while len(self._buckets) > self.max_tenants:
            self._buckets.popitem(last=False)
        return wait
