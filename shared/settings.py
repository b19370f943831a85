"""The settings every service shares. Each service subclasses `ServiceSettings` with its own prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["RegistryClientSettings", "ServiceSettings"]


class ServiceSettings(BaseSettings):
    """Read once at start-up from the environment (CASCADE_<SERVICE>_*) and passed in; nothing else
    reads os.environ. Tracing is configured by the standard OTEL_* variables instead."""

    # hide_input_in_errors: a refused setting must not echo the others, a token or password among them.
    model_config = SettingsConfigDict(
        env_prefix="CASCADE_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated.")
    topic_prefix: str = Field("cascade", description="Prefix of every topic name, to share a cluster.")
    topic_partitions: int = Field(
        3,
        ge=1,
        description="Partitions of the topics this service creates; the most consumers a group can use.",
    )
    kafka_metadata_max_age_seconds: float = Field(
        15.0,
        gt=0.0,
        description=(
            "How stale a Kafka client's view of topics may grow. On a cluster, a topic just created "
            "can be missing from the broker a consumer asks; the consumer group is then assigned "
            "nothing for it until the next refresh (aiokafka does not ask again sooner)."
        ),
    )
    topic_replication_factor: int = Field(
        1,
        ge=1,
        description=(
            "Copies of each partition of the topics this service creates: 1 on a single broker, 3 on "
            "a cluster (whose brokers require min.insync.replicas=2 of them for an acks=all write)."
        ),
    )
    grpc_host: str = Field("127.0.0.1", description="Interface the gRPC server binds to.")
    grpc_port: int = Field(0, description="gRPC port; 0 picks a free one (the service logs it).")
    metrics_port: int = Field(0, description="Prometheus /metrics port; 0 disables the endpoint.")
    data_dir: Path = Field(Path(".cascade/data"), description="Directory this service alone owns.")
    log_level: str = Field("INFO", description="Python log level.")
    log_format: str = Field("auto", description="'json', 'text', or 'auto' (json unless on a terminal).")
    shutdown_grace_seconds: float = Field(10.0, description="How long in-flight work may finish on SIGTERM.")
    retry_backoff_seconds: float = Field(
        1.0, ge=0.0, description="Pause before a failed message is first redelivered; doubled each time."
    )
    retry_backoff_max_seconds: float = Field(
        30.0, ge=0.0, description="Longest pause between two deliveries of a failing message."
    )
    retry_max_attempts: int = Field(
        10,
        ge=1,
        description="Tries of a message failing with a transient error (a dependency down) before it "
        "is dead-lettered as 'retries exhausted'.",
    )
    retry_unknown_max_attempts: int = Field(
        3,
        ge=1,
        description="Tries of a message failing with an error nobody classified (likely a bug); "
        "never more than retry_max_attempts.",
    )
    retry_max_seconds: float = Field(
        300.0,
        gt=0.0,
        description="Longest time one message may keep failing before it is dead-lettered, however "
        "many tries are left.",
    )
    max_message_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description="Largest consumed message body; a larger one is dead-lettered unparsed.",
    )
    max_json_depth: int = Field(
        64,
        ge=1,
        description="Deepest nesting of arrays and objects in a consumed JSON body; a deeper one is "
        "dead-lettered unparsed.",
    )
    degraded_not_serving_seconds: float = Field(
        120.0,
        gt=0.0,
        description="How long a consumer may keep failing on one message while health stays SERVING "
        "(reported degraded); past it, NOT_SERVING until the message is handled or dead-lettered.",
    )
    grpc_root_span_sample_rate: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description=(
            "Fraction of incoming gRPC calls without a trace context (no W3C traceparent metadata) "
            "that start a trace with a server span. Calls that carry one are always traced, as part "
            "of the caller's trace; health checks never are."
        ),
    )

    # gRPC security: TLS and who may call (cascade.security).
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate this service serves TLS with, and presents as a client (mTLS). "
        "Unset: a plaintext gRPC port.",
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle. Set: every channel this service opens uses TLS and verifies the "
        "server against it; with tls_require_client_cert, callers' certificates are verified too.",
    )
    tls_require_client_cert: bool = Field(
        False, description="Accept only callers presenting a certificate signed by tls_ca_file (mTLS)."
    )
    auth_required: bool = Field(
        False,
        description="Refuse calls without a known bearer token or client certificate (UNAUTHENTICATED) "
        "and calls whose principal lacks the method's role (PERMISSION_DENIED). Off, an anonymous "
        "caller may do anything, as on a private network.",
    )
    auth_principals_file: Path | None = Field(
        None, description="TOML file of the principals this service knows: token hashes and roles."
    )
    token: SecretStr = Field(
        SecretStr(""), description="Bearer token this service presents on the calls it makes (its identity)."
    )
    token_file: Path | None = Field(
        None, description="File holding that token (a mounted secret); read at start-up, wins over token."
    )

    # Kafka security (cascade.kafka_security): how every Kafka client of this service connects.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. Whatever is set is used or the "
        "service fails to start: a client never falls back to PLAINTEXT.",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism, for the SASL_* protocols."
    )
    kafka_sasl_username: str = Field("", description="SASL user, for the SASL_* protocols.")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password of that user.")
    kafka_sasl_password_file: Path | None = Field(
        None, description="File holding the SASL password (a mounted secret); read at start-up, wins."
    )
    kafka_ssl_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle the broker's certificate is verified with (SSL, SASL_SSL); "
        "unset, the system's CAs.",
    )
    kafka_ssl_cert_file: Path | None = Field(
        None, description="PEM client certificate presented to the broker (optional, for mTLS)."
    )
    kafka_ssl_key_file: Path | None = Field(None, description="PEM private key of kafka_ssl_cert_file.")

    @model_validator(mode="after")
    def _kafka_security_is_whole(self) -> Self:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not self.kafka_sasl_username:
            raise ValueError(f"kafka_security_protocol {protocol} needs kafka_sasl_username")
        if (
            protocol.startswith("SASL_")
            and self.kafka_sasl_password_file is None
            and not self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(
                f"kafka_security_protocol {protocol} needs kafka_sasl_password or kafka_sasl_password_file"
            )
        ssl_files = [self.kafka_ssl_ca_file, self.kafka_ssl_cert_file, self.kafka_ssl_key_file]
        if not protocol.endswith("SSL") and any(file is not None for file in ssl_files):
            # A CA or certificate says TLS was meant; connecting in the clear instead would be silent.
            raise ValueError(
                f"kafka_ssl_* files are set but kafka_security_protocol is {protocol}: use SSL or SASL_SSL"
            )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError("kafka_ssl_cert_file and kafka_ssl_key_file go together")
        return self

    def outgoing_token(self) -> str:
        """The bearer token this service calls others with ("" for none)."""
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token.get_secret_value()

    @property
    def kafka_bootstrap_servers(self) -> list[str]:
        """The bootstrap list, one `host:port` each. Give clients this, not the string: FastStream
        hands a string to aiokafka as a single host, so "a:9092,b:9092" would never connect."""
        return [server.strip() for server in self.kafka_bootstrap.split(",") if server.strip()]


class RegistryClientSettings(ServiceSettings):
    """For services that call the registry."""

    registry_address: str = Field("127.0.0.1:50054", description="host:port of RegistryService.")
