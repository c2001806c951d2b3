"""Is Kafka reachable? Answered from a cached AdminClient metadata call so that health checks
and scrapes never hammer the broker or block the event loop."""
from __future__ import annotations

import asyncio
import time

from confluent_kafka.admin import AdminClient

from aether_platform.kafka_client import connection, silent_logger


class KafkaProbe:
    def __init__(self, kafka=None, ttl: float = 2.0):
        """`kafka`: a bootstrap list or a kafka_client config dict; None = the configured cluster."""
        self._admin = AdminClient({**connection(kafka), "logger": silent_logger("aether.kafka.probe"),
                                   "socket.timeout.ms": 1500})
        self._ttl = ttl
        self._at = 0.0
        self._ok = False
        self._lock = asyncio.Lock()

    def _check(self) -> bool:
        try:
            return bool(self._admin.list_topics(timeout=1.5).brokers)
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False

    async def reachable(self) -> bool:
        async with self._lock:
            if time.monotonic() - self._at > self._ttl:
                self._ok = await asyncio.to_thread(self._check)
                self._at = time.monotonic()
            return self._ok
