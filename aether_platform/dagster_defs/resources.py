"""Resources shared by the domains: the CRM database, the Kafka cluster and the relay's settings,
from the environment."""
from __future__ import annotations

import threading

import dagster as dg
import psycopg
import pydantic

from aether_platform.db_url import libpq_url
from aether_platform.kafka_client import client_config
from aether_platform.relay import RelayConfig, RelaySettings

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
    """The Kafka cluster and the name of the CRM events topic. TLS and SASL come from the process
    environment (KAFKA_SECURITY_PROTOCOL, ...; aether_platform/kafka_client.py), as for every other
    Kafka client of the platform: the password file never enters Dagster's run config."""

    bootstrap_servers: str
    topic: str

    def client_config(self) -> dict:
        return client_config(self.bootstrap_servers)


def _relay_resource_fields() -> dict:
    """RelaySettings' fields, as Dagster config fields: one definition, shown in the UI."""
    annotations, defaults = {}, {}
    for name, field in RelaySettings.model_fields.items():
        annotations[name] = field.annotation
        defaults[name] = pydantic.Field(field.default, description=f"{field.alias}. "
                                        + (field.description or ""))
    return {"__annotations__": annotations, **defaults}


class _RelayResourceBase(dg.ConfigurableResource):
    @classmethod
    def from_env(cls) -> "RelayResource":
        return cls(**RelaySettings().model_dump())

    def settings(self) -> RelaySettings:
        return RelaySettings(**{name: getattr(self, name) for name in RelaySettings.model_fields})

    def config(self, dsn: str, bootstrap: str, topic: str, **overrides) -> RelayConfig:
        values = {**self.settings().model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        return RelayConfig(dsn=dsn, bootstrap=bootstrap, topic=topic, **values)


# The relay's settings as a resource; definitions.py fills it from the environment (from_env), so the
# Dagster UI shows the values in force, and a test passes its own.
RelayResource = type("RelayResource", (_RelayResourceBase,),
                     {"__module__": __name__, "__doc__": "The outbox relay's settings "
                      "(aether_platform.relay.RelaySettings), from the environment.", **_relay_resource_fields()})
