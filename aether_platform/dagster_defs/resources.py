"""Resources shared by the domains: the CRM database and the Kafka cluster, from the environment."""
from __future__ import annotations

import threading

import dagster as dg
import psycopg

from aether_platform.db_url import libpq_url

_cached: dict[str, psycopg.Connection] = {}
_cached_lock = threading.Lock()


class CrmDatabase(dg.ConfigurableResource):
    """The CRM PostgreSQL database that holds the outbox and the idempotency keys."""

    dsn: str

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(libpq_url(self.dsn), autocommit=autocommit, connect_timeout=10)

    def shared_connection(self) -> psycopg.Connection:
        """One autocommit connection per DSN for the whole code-server process. Sensors rebuild
        their resources on every tick; reconnecting every 5 s would cost more than the query."""
        with _cached_lock:
            conn = _cached.get(self.dsn)
            if conn is None or conn.closed or conn.broken:
                conn = _cached[self.dsn] = self.connect()
            return conn


class KafkaCluster(dg.ConfigurableResource):
    """The Kafka cluster and the name of the CRM events topic."""

    bootstrap_servers: str
    topic: str
