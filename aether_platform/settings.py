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

    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL", description=(
        "libpq URL of the CRM database (postgresql://user[:password]@host:port/db). "
        "`make env` prints the local stack's."))
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", alias="KAFKA_BOOTSTRAP_SERVERS", description=(
        "Kafka bootstrap servers, a comma list of host:port. `make env` prints the local stack's."))
    # How every Kafka client connects (aether_platform/kafka_client.py): librdkafka's standard
    # properties, each from the variable named after it; empty = librdkafka's default (plaintext).
    kafka_security_protocol: str = Field("", alias="KAFKA_SECURITY_PROTOCOL", description=(
        "librdkafka security.protocol of every Kafka client (e.g. SASL_SSL); empty: plaintext."))
    kafka_sasl_mechanism: str = Field("", alias="KAFKA_SASL_MECHANISM", description=(
        "librdkafka sasl.mechanism (e.g. SCRAM-SHA-512)."))
    kafka_sasl_username: str = Field("", alias="KAFKA_SASL_USERNAME", description="SASL user name.")
    kafka_sasl_password_file: str = Field("", alias="KAFKA_SASL_PASSWORD_FILE", description=(
        "File holding the SASL password (never the password itself in the environment)."))
    kafka_ssl_ca_location: str = Field("", alias="KAFKA_SSL_CA_LOCATION", description=(
        "CA certificate file that verifies the brokers; empty: the system's CAs."))
    kafka_ssl_certificate_location: str = Field("", alias="KAFKA_SSL_CERTIFICATE_LOCATION", description=(
        "Client certificate file, for brokers that require mutual TLS."))
    kafka_ssl_key_location: str = Field("", alias="KAFKA_SSL_KEY_LOCATION", description=(
        "Client private key file, for mutual TLS."))
    kafka_ssl_endpoint_identification_algorithm: str = Field("", alias="KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", description=(
            "librdkafka ssl.endpoint.identification.algorithm (`https` checks the broker's host name, `none` not); "
            "empty: librdkafka's default."))
    topic: str = Field("aetherlink.events", alias="AETHER_TOPIC", description="The event topic.")
    topic_partitions: int = Field(3, alias="AETHER_TOPIC_PARTITIONS", description=(
        "Partitions of the topic when it is created (`aether topic provision`); drift is reported, never changed."))
    topic_replication_factor: int = Field(1, alias="AETHER_TOPIC_REPLICATION_FACTOR", description=(
        "Replication factor of the topic when it is created; 3 on a production cluster."))
    # The SSE bridge reads partitions with assign(); the group id only labels it in the health
    # JSON and satisfies librdkafka, it never joins a consumer group.
    stream_group: str = Field("aether-crm-events", alias="AETHER_STREAM_GROUP", description=(
        "Consumer group id of the SSE bridge's consumer: a label in the health JSON; it never joins the group."))

    idempotency_ttl_seconds: int = Field(24 * 3600, alias="AETHER_IDEMPOTENCY_TTL_SECONDS", description=(
        "How long an Idempotency-Key is remembered, per tenant."))
    max_body_bytes: int = Field(64 * 1024, alias="AETHER_MAX_BODY_BYTES", description=(
        "Largest request body the API reads; larger is 413."))
    # POST creates solved without FastAPI's dependency machinery (api.fast_create); off = every request
    # takes the routed path, with the same answers and about twice the CPU per create.
    api_fast_create: bool = Field(True, alias="AETHER_API_FAST_CREATE", description=(
        "Serve POST creates without FastAPI's dependency machinery (same answers, about half the CPU); "
        "off routes every request through FastAPI."))
    db_pool_min: int = Field(2, alias="AETHER_DB_POOL_MIN", description=(
        "Database connections each API process keeps open."))
    db_pool_max: int = Field(20, alias="AETHER_DB_POOL_MAX", description=(
        "Most database connections per API process."))
    max_header_bytes: int = Field(16 * 1024, alias="AETHER_MAX_HEADER_BYTES", description=(
        "Largest request header block; larger is 431."))
    max_json_depth: int = Field(16, alias="AETHER_MAX_JSON_DEPTH", description=(
        "Deepest JSON nesting a body may have; deeper is 422."))
    # Per tenant and per API process (token bucket); 0 turns the limit off.
    write_rate_per_tenant: float = Field(50.0, alias="AETHER_WRITE_RATE_PER_TENANT", description=(
        "Writes per second per tenant and API process (token bucket), beyond which writes get 429; 0 turns it off."))
    write_burst_per_tenant: int = Field(100, alias="AETHER_WRITE_BURST_PER_TENANT", description=(
        "Burst of writes a tenant may send above the rate."))

    # Authentication: off for local development, on in the production profile (aether_platform/auth.py).
    auth: bool = Field(False, alias="AETHER_AUTH", description=(
        "Require a bearer token on the API (off for local development, on in production)."))
    auth_token_file: str = Field("", alias="AETHER_AUTH_TOKEN_FILE", description=(
        "File of token hashes, one `sha256:<hex> <tenant|operator> [label]` per line "
        "(`aether auth hash-token`); re-read on change. Empty: no token file."))
    auth_oidc_issuer: str = Field("", alias="AETHER_AUTH_OIDC_ISSUER", description=(
        "OIDC issuer whose JWTs are accepted (`iss`); empty: no OIDC."))
    auth_oidc_audience: str = Field("", alias="AETHER_AUTH_OIDC_AUDIENCE", description=(
        "Audience (`aud`) the JWTs must carry."))
    auth_oidc_jwks_url: str = Field("", alias="AETHER_AUTH_OIDC_JWKS_URL", description=(
        "URL of the issuer's signing keys (JWKS), needed with an OIDC issuer."))
    auth_tenant_claim: str = Field("tenant_id", alias="AETHER_AUTH_TENANT_CLAIM", description=(
        "JWT claim that holds the token's tenant UUID."))
    # A JWT whose claim of this name is "operator" is an operator's (no tenant needed).
    auth_role_claim: str = Field("aether_role", alias="AETHER_AUTH_ROLE_CLAIM", description="JWT claim whose value `operator` makes the token an operator's (no tenant needed).")
    # The JWKS is re-read this often in the background: a key removed at the issuer is refused
    # within this time. A token naming an unknown key triggers one extra read, at most once per
    # cooldown; while the issuer is unreachable such a token gets 503 with Retry-After.
    auth_oidc_jwks_refresh_seconds: float = Field(300.0, alias="AETHER_AUTH_OIDC_JWKS_REFRESH_SECONDS", gt=0, description="How often the issuer's keys are re-read in the background; a removed key is refused within this time.")
    auth_oidc_jwks_cooldown_seconds: float = Field(10.0, alias="AETHER_AUTH_OIDC_JWKS_COOLDOWN_SECONDS", ge=0, description="Least time between two extra key reads triggered by tokens naming an unknown key.")
    # The Command Center's sign-in cookie (api/security.py): a signed stream ticket, valid this
    # long. Its HMAC key: set it when several API processes serve one site (else each process
    # makes its own, and a ticket works only on the process that issued it, until it restarts).
    auth_stream_ticket_seconds: int = Field(3600, alias="AETHER_AUTH_STREAM_TICKET_SECONDS", gt=0, description="Validity of the Command Center's sign-in cookie (a signed stream ticket).")
    auth_stream_ticket_secret: SecretStr = Field(SecretStr(""), alias="AETHER_AUTH_STREAM_TICKET_SECRET", description="HMAC key of the stream tickets; set the same one on every API process of a site (else each makes its own).")
    # With auth on: /metrics and the Command Center page need an operator token.
    auth_protect_metrics: bool = Field(True, alias="AETHER_AUTH_PROTECT_METRICS", description=(
        "With auth on, /metrics needs an operator token."))
    auth_protect_ops: bool = Field(True, alias="AETHER_AUTH_PROTECT_OPS", description=(
        "With auth on, the Command Center page (/ops/) needs an operator token."))

    # GET /crm-events (api/stream). Defaults suit one API process serving thousands of clients.
    sse_retry_ms: int = Field(2000, alias="AETHER_SSE_RETRY_MS", description=(
        "The `retry:` hint sent to SSE clients: how long a browser waits before reconnecting."))
    sse_keepalive_seconds: float = Field(15.0, alias="AETHER_SSE_KEEPALIVE_SECONDS", description=(
        "Interval of the keep-alive comment on an idle stream, so proxies keep it open."))
    # A write blocked this long means the client reads slower than events arrive: disconnect it
    # (it resumes from its last id) rather than buffer for it or drop events.
    sse_send_timeout_seconds: float = Field(10.0, alias="AETHER_SSE_SEND_TIMEOUT_SECONDS", description=(
        "A stream write blocked this long disconnects the slow client, which resumes from its last id."))
    # Least time between two wake-ups of every client, at 1000 clients (less with fewer): bounds
    # how often a thousand clients are woken, and so how long a new event can wait for one.
    sse_max_linger_ms: float = Field(50.0, alias="AETHER_SSE_MAX_LINGER_MS", description=(
        "Least time between two wake-ups of every client at 1000 clients (less with fewer): "
        "the most a new event waits to be batched."))
    sse_max_clients: int = Field(5000, alias="AETHER_SSE_MAX_CLIENTS", description=(
        "Most concurrent stream clients per API process; more get a `retry:` hint and are closed."))
    # Per-partition ring buffer of the shared consumer: resumes inside it cost no broker call.
    sse_ring_events: int = Field(20000, alias="AETHER_SSE_RING_EVENTS", description=(
        "Events kept in memory per partition; a resume inside them costs no broker call."))
    sse_ring_bytes: int = Field(32 * 1024 * 1024, alias="AETHER_SSE_RING_BYTES", description=(
        "Bytes of events kept in memory, split evenly between the partitions (whichever limit is reached first)."))
    # Records per partition read back at startup, so cursors from before a restart resume from memory.
    sse_prefill_events: int = Field(2000, alias="AETHER_SSE_PREFILL_EVENTS", description=(
        "Records per partition read back at start-up, so cursors from before a restart resume from memory."))
    sse_catchup_consumers: int = Field(4, alias="AETHER_SSE_CATCHUP_CONSUMERS", description=(
        "Most concurrent broker reads for resumes older than the in-memory buffer."))
    sse_dedup_window: int = Field(5000, alias="AETHER_SSE_DEDUP_WINDOW", description=(
        "Event ids remembered per partition to drop a duplicate the relay published twice."))
    sse_cors_origins: str = Field("", alias="AETHER_SSE_CORS_ORIGINS", description=(
        "Origins allowed to open the stream cross-origin: a comma list or `*`; empty: same-origin only."))  # comma list or "*"; empty = same-origin only
    # The relay's settings live with the relay: aether_platform.relay.RelaySettings.


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
