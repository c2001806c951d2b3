"""aether_platform.kafka_client: every Kafka setting from its librdkafka-named variable, the
password only from its file, and a half-configured client refused with the variable's name."""
from __future__ import annotations

import pytest

from aether_platform.kafka_client import KafkaConfigError, client_config, connection, env_names, redacted
from aether_platform.settings import Settings


def _settings(**env) -> Settings:
    base = {name: "" for name in env_names()}
    return Settings(**{**base, "KAFKA_BOOTSTRAP_SERVERS": "b1:9092,b2:9092", **env})


def test_plaintext_is_bootstrap_only():
    assert client_config(settings=_settings()) == {"bootstrap.servers": "b1:9092,b2:9092"}


def test_sasl_ssl_takes_each_property_from_its_variable_and_the_password_from_its_file(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    conf = client_config("override:9093", _settings(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="SCRAM-SHA-512", KAFKA_SASL_USERNAME="aether",
        KAFKA_SASL_PASSWORD_FILE=str(tmp_path / "pw"), KAFKA_SSL_CA_LOCATION=str(tmp_path / "ca.crt"),
        KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM="https"))
    assert conf == {"bootstrap.servers": "override:9093", "security.protocol": "SASL_SSL",
                    "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "aether", "sasl.password": "s3cret",
                    "ssl.ca.location": str(tmp_path / "ca.crt"), "ssl.endpoint.identification.algorithm": "https"}
    assert redacted(conf)["sasl.password"] == "***"
    assert "s3cret" not in repr(redacted(conf))


@pytest.mark.parametrize("env, names", [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u"},
     "KAFKA_SASL_PASSWORD_FILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u",
      "KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "KAFKA_SASL_PASSWORD_FILE=/nonexistent/pw"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/nonexistent/ca"}, "KAFKA_SSL_CA_LOCATION"),
])
def test_a_half_configured_client_is_refused_naming_the_variable(env, names):
    with pytest.raises(KafkaConfigError, match=names):
        client_config(settings=_settings(**env))


def test_mutual_tls_needs_both_certificate_and_key(tmp_path):
    (tmp_path / "c").write_text("x")
    with pytest.raises(KafkaConfigError, match="KAFKA_SSL_KEY_LOCATION"):
        client_config(settings=_settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CERTIFICATE_LOCATION=str(tmp_path / "c")))


def test_connection_takes_a_bootstrap_list_or_a_built_config():
    built = {"bootstrap.servers": "x:1", "security.protocol": "SSL"}
    assert connection(built) == built and connection(built) is not built
    assert connection("y:2")["bootstrap.servers"] == "y:2"
