"""How every Kafka client of the platform connects: one librdkafka configuration, from the environment.

Why one builder: the relay's producer, the topic admin, the API's health probe, the stream hub's
consumers, the CLI and Dagster each open their own librdkafka client. A managed Kafka (Confluent
Cloud, MSK, Aiven) needs TLS and SASL on every one of them; a property forgotten in one place is a
client that cannot connect, found only in production. So every client starts from
`client_config()` and adds only its own tuning.

Guarantees:
- The connection properties are librdkafka's standard ones, each read from the environment variable
  named after it (`security.protocol` <- KAFKA_SECURITY_PROTOCOL, ...), through
  aether_platform.settings; documented in one table in docs/deploy.md.
- The SASL password is only ever read from a file (KAFKA_SASL_PASSWORD_FILE), each time a config
  is built, so a rotated file is picked up by the next client; it is never in the environment,
  never logged, and `redacted()` is what to print when a config must be shown.
- A half-configured client fails when the config is built, with one sentence naming the variable,
  instead of timing out against the broker.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

from aether_platform.settings import Settings, get_settings

# librdkafka property -> the Settings field that holds it (env var: the property upper-cased, dots
# as underscores, prefixed KAFKA_). The password is not here: it comes from a file.
PROPERTIES = {
    "security.protocol": "kafka_security_protocol",
    "sasl.mechanism": "kafka_sasl_mechanism",
    "sasl.username": "kafka_sasl_username",
    "ssl.ca.location": "kafka_ssl_ca_location",
    "ssl.certificate.location": "kafka_ssl_certificate_location",
    "ssl.key.location": "kafka_ssl_key_location",
    "ssl.endpoint.identification.algorithm": "kafka_ssl_endpoint_identification_algorithm",
}
SECRET_PROPERTIES = ("sasl.password", "ssl.key.password")


class KafkaConfigError(ValueError):
    """The Kafka connection settings are incomplete or unreadable; the message names the variable."""


def client_config(bootstrap: str | None = None, settings: Settings | None = None) -> dict:
    """The connection part of a librdkafka config: bootstrap servers plus TLS/SASL as configured.

    `bootstrap` overrides KAFKA_BOOTSTRAP_SERVERS (tests and tools that point at another broker);
    the security settings always come from `settings` (default: the process's)."""
    s = settings or get_settings()
    conf: dict = {"bootstrap.servers": bootstrap or s.kafka_bootstrap_servers}
    for prop, attr in PROPERTIES.items():
        value = getattr(s, attr)
        if value:
            conf[prop] = value
    protocol = conf.get("security.protocol", "plaintext").lower()
    if protocol.startswith("sasl"):
        if not conf.get("sasl.mechanism"):
            raise KafkaConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol.upper()} needs KAFKA_SASL_MECHANISM "
                                   "(e.g. SCRAM-SHA-512 or PLAIN)")
        if conf["sasl.mechanism"].upper() != "OAUTHBEARER":
            if not conf.get("sasl.username") or not s.kafka_sasl_password_file:
                raise KafkaConfigError(f"KAFKA_SASL_MECHANISM={conf['sasl.mechanism']} needs KAFKA_SASL_USERNAME "
                                       "and KAFKA_SASL_PASSWORD_FILE")
            conf["sasl.password"] = read_secret(s.kafka_sasl_password_file, "KAFKA_SASL_PASSWORD_FILE")
    for prop in ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location"):
        if prop in conf and not Path(conf[prop]).is_file():
            raise KafkaConfigError(f"{_env_name(prop)}={conf[prop]}: no such file")
    if ("ssl.certificate.location" in conf) != ("ssl.key.location" in conf):
        raise KafkaConfigError("mutual TLS needs both KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION")
    return conf


def connection(kafka: "str | Mapping | None" = None) -> dict:
    """What the helpers that take "a Kafka" accept: a bootstrap list (with this process's security
    settings), a config dict already built by client_config(), or None for the configured cluster."""
    if kafka is None or isinstance(kafka, str):
        return client_config(kafka)
    return dict(kafka)


def read_secret(path: str, variable: str) -> str:
    """A secret file's content without its trailing newline (what `echo secret > file` leaves)."""
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise KafkaConfigError(f"{variable}={path}: cannot read it ({exc.strerror})") from None


def redacted(conf: Mapping) -> dict:
    """The config as it may be printed or logged: secrets replaced, the logger object named."""
    return {k: ("***" if k in SECRET_PROPERTIES else v if isinstance(v, (str, int, float, bool)) else type(v).__name__)
            for k, v in conf.items()}


def _env_name(prop: str) -> str:
    return "KAFKA_" + prop.upper().replace(".", "_")


def env_names() -> list[str]:
    """Every environment variable this module reads, for docs and for processes that pass them on."""
    return ["KAFKA_BOOTSTRAP_SERVERS", *(_env_name(p) for p in PROPERTIES), "KAFKA_SASL_PASSWORD_FILE"]


def silent_logger(name: str) -> logging.Logger:
    """A logger for librdkafka clients whose caller reports reachability itself: librdkafka logs
    every failed connection attempt, which would only be noise there. Safe to call repeatedly."""
    logger = logging.getLogger(name)
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger
