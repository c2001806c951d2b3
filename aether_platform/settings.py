"""One settings object for every process (API, relay, CLI), read from the environment.

The defaults match the local stack started by `aether stack up`, so nothing needs to be set
for local work; production overrides everything through the environment.
"""
from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PG_PORT = 55432
DEFAULT_DATABASE_URL = f"postgresql://aether@127.0.0.1:{DEFAULT_PG_PORT}/crm"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", alias="KAFKA_BOOTSTRAP_SERVERS")
    # How every Kafka client connects (aether_platform/kafka_client.py): librdkafka's standard
    # properties, each from the variable named after it; empty = librdkafka's default (plaintext).
    kafka_security_protocol: str = Field("", alias="KAFKA_SECURITY_PROTOCOL")
    kafka_sasl_mechanism: str = Field("", alias="KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str = Field("", alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password_file: str = Field("", alias="KAFKA_SASL_PASSWORD_FILE")
    kafka_ssl_ca_location: str = Field("", alias="KAFKA_SSL_CA_LOCATION")
    kafka_ssl_certificate_location: str = Field("", alias="KAFKA_SSL_CERTIFICATE_LOCATION")
    kafka_ssl_key_location: str = Field("", alias="KAFKA_SSL_KEY_LOCATION")
    kafka_ssl_endpoint_identification_algorithm: str = Field("", alias="KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM")
    topic: str = Field("aetherlink.events", alias="AETHER_TOPIC")
    topic_partitions: int = Field(3, alias="AETHER_TOPIC_PARTITIONS")
    topic_replication_factor: int = Field(1, alias="AETHER_TOPIC_REPLICATION_FACTOR")
    # The SSE bridge reads partitions with assign(); the group id only labels it in the health
    # JSON and satisfies librdkafka, it never joins a consumer group.
    stream_group: str = Field("aether-crm-events", alias="AETHER_STREAM_GROUP")

    idempotency_ttl_seconds: int = Field(24 * 3600, alias="AETHER_IDEMPOTENCY_TTL_SECONDS")
    max_body_bytes: int = Field(64 * 1024, alias="AETHER_MAX_BODY_BYTES")
    # POST creates solved without FastAPI's dependency machinery (api.fast_create); off = every request
    # takes the routed path, with the same answers and about twice the CPU per create.
    api_fast_create: bool = Field(True, alias="AETHER_API_FAST_CREATE")
    db_pool_min: int = Field(2, alias="AETHER_DB_POOL_MIN")
    db_pool_max: int = Field(20, alias="AETHER_DB_POOL_MAX")
    max_header_bytes: int = Field(16 * 1024, alias="AETHER_MAX_HEADER_BYTES")
    max_json_depth: int = Field(16, alias="AETHER_MAX_JSON_DEPTH")
    # Per tenant and per API process (token bucket); 0 turns the limit off.
    write_rate_per_tenant: float = Field(50.0, alias="AETHER_WRITE_RATE_PER_TENANT")
    write_burst_per_tenant: int = Field(100, alias="AETHER_WRITE_BURST_PER_TENANT")

    # Authentication: off for local development, on in the production profile (aether_platform/auth.py).
    auth: bool = Field(False, alias="AETHER_AUTH")
    auth_token_file: str = Field("", alias="AETHER_AUTH_TOKEN_FILE")
    auth_oidc_issuer: str = Field("", alias="AETHER_AUTH_OIDC_ISSUER")
    auth_oidc_audience: str = Field("", alias="AETHER_AUTH_OIDC_AUDIENCE")
    auth_oidc_jwks_url: str = Field("", alias="AETHER_AUTH_OIDC_JWKS_URL")
    auth_tenant_claim: str = Field("tenant_id", alias="AETHER_AUTH_TENANT_CLAIM")
    # A JWT whose claim of this name is "operator" is an operator's (no tenant needed).
    auth_role_claim: str = Field("aether_role", alias="AETHER_AUTH_ROLE_CLAIM")
    # The JWKS is re-read this often in the background: a key removed at the issuer is refused
    # within this time. A token naming an unknown key triggers one extra read, at most once per
    # cooldown; while the issuer is unreachable such a token gets 503 with Retry-After.
    auth_oidc_jwks_refresh_seconds: float = Field(300.0, alias="AETHER_AUTH_OIDC_JWKS_REFRESH_SECONDS", gt=0)
    auth_oidc_jwks_cooldown_seconds: float = Field(10.0, alias="AETHER_AUTH_OIDC_JWKS_COOLDOWN_SECONDS", ge=0)
    # The Command Center's sign-in cookie (api/security.py): a signed stream ticket, valid this
    # long. Its HMAC key: set it when several API processes serve one site (else each process
    # makes its own, and a ticket works only on the process that issued it, until it restarts).
    auth_stream_ticket_seconds: int = Field(3600, alias="AETHER_AUTH_STREAM_TICKET_SECONDS", gt=0)
    auth_stream_ticket_secret: SecretStr = Field(SecretStr(""), alias="AETHER_AUTH_STREAM_TICKET_SECRET")
    # With auth on: /metrics and the Command Center page need an operator token.
    auth_protect_metrics: bool = Field(True, alias="AETHER_AUTH_PROTECT_METRICS")
    auth_protect_ops: bool = Field(True, alias="AETHER_AUTH_PROTECT_OPS")

    # GET /crm-events (api/stream). Defaults suit one API process serving thousands of clients.
    sse_retry_ms: int = Field(2000, alias="AETHER_SSE_RETRY_MS")
    sse_keepalive_seconds: float = Field(15.0, alias="AETHER_SSE_KEEPALIVE_SECONDS")
    # A write blocked this long means the client reads slower than events arrive: disconnect it
    # (it resumes from its last id) rather than buffer for it or drop events.
    sse_send_timeout_seconds: float = Field(10.0, alias="AETHER_SSE_SEND_TIMEOUT_SECONDS")
    # Least time between two wake-ups of every client, at 1000 clients (less with fewer): bounds
    # how often a thousand clients are woken, and so how long a new event can wait for one.
    sse_max_linger_ms: float = Field(50.0, alias="AETHER_SSE_MAX_LINGER_MS")
    sse_max_clients: int = Field(5000, alias="AETHER_SSE_MAX_CLIENTS")
    # Per-partition ring buffer of the shared consumer: resumes inside it cost no broker call.
    sse_ring_events: int = Field(20000, alias="AETHER_SSE_RING_EVENTS")
    sse_ring_bytes: int = Field(32 * 1024 * 1024, alias="AETHER_SSE_RING_BYTES")
    # Records per partition read back at startup, so cursors from before a restart resume from memory.
    sse_prefill_events: int = Field(2000, alias="AETHER_SSE_PREFILL_EVENTS")
    sse_catchup_consumers: int = Field(4, alias="AETHER_SSE_CATCHUP_CONSUMERS")
    sse_dedup_window: int = Field(5000, alias="AETHER_SSE_DEDUP_WINDOW")
    sse_cors_origins: str = Field("", alias="AETHER_SSE_CORS_ORIGINS")  # comma list or "*"; empty = same-origin only
    # The relay's settings live with the relay: aether_platform.relay.RelaySettings.


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
