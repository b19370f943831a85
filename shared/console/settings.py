"""Where the console finds the stack: a local stack's home (its ports, TLS material and traces
are read from it), or explicit addresses for a stack elsewhere. `cascade ui` sets these."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8501


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CASCADE_CONSOLE_", extra="ignore")

    # A local stack's home (cascade.stack): addresses, Kafka and TLS settings and the traces
    # directory are taken from the config it was started with.
    home: Path | None = None
    # gRPC address per service ("ingest", "registry", ...), overriding the home's; a stack
    # elsewhere needs these (and kafka_bootstrap for the loop's lag and events).
    addresses: dict[str, str] = Field(default_factory=dict)
    kafka_bootstrap: str = ""
    topic_prefix: str = "cascade"
    # OTLP-JSON span files for the Traces page (a local stack's HOME/traces by default).
    traces_dir: Path | None = None
    # Whether the stack requires a token (a local stack's home says; this overrides it): without
    # one signed in, the console then makes no call at all.
    auth_required: bool | None = None
    # Seconds between refreshes of the live parts of a page (the loop's cascades and events).
    refresh_seconds: float = 3.0
