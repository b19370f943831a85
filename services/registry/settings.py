from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from cascade.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CASCADE_REGISTRY_", extra="ignore", frozen=True)

    grpc_port: int = Field(50054, description="gRPC port of RegistryService.")
    ingest_address: str = Field("127.0.0.1:50051", description="Where IngestService answers (for lineage).")
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the metadata database, e.g. postgresql+psycopg://user:pw@host/db;"
        " empty means SQLite (WAL) at <data_dir>/registry.sqlite3.",
    )
    max_artifact_bytes: int = Field(1024 * 1024 * 1024, description="Largest artifact accepted.")
    webhook_urls: str = Field(
        "",
        description="Comma-separated URLs that receive every registry event as a CloudEvent (HTTP POST).",
    )
    webhook_secret_file: Path | None = Field(
        None, description="File holding the webhook secret (a mounted secret); read at start-up, wins."
    )
    webhook_secret: SecretStr = Field(
        SecretStr(""), description="Signs webhook bodies: X-Cascade-Signature: sha256=<HMAC of the body>."
    )
    webhook_max_attempts: int = Field(10, ge=1, description="Tries per event before a webhook gives up.")
    default_permission: Literal["none", "read", "edit", "manage"] = Field(
        "read",
        description="The level an authenticated principal has on a model that granted it nothing.",
    )
    promotion_policy: Literal["automatic", "manual"] = Field(
        "automatic",
        description="The default for models that set none (UpdateModel, `cascade models policy`)."
        " automatic: a passed candidate becomes champion; manual: it becomes challenger.",
    )
    notifications_file: Path | None = Field(
        None,
        description="JSON or YAML list of chat destinations: {name, kind: slack|teams|cloudevent, url or"
        " url_file, models: [globs], events: [kinds]} (README, Notifications). Re-read when it changes.",
    )
    console_url: str = Field(
        "", description="The web console's base URL that notifications link to; empty: no links."
    )
    console_url_file: Path | None = Field(
        None,
        description="File holding the console's URL (the stack launcher writes it when it starts the"
        " console); read for each message and wins over console_url when present.",
    )
    notification_timeout_seconds: float = Field(
        5.0, gt=0, description="Timeout of one POST to a destination."
    )
    notification_max_attempts: int = Field(
        8, ge=1, description="Tries per message before it is marked failed."
    )
    notification_budget_seconds: float = Field(
        3600.0, gt=0, description="How long after its event a message may still be retried; then failed."
    )
    notification_backoff_seconds: float = Field(1.0, gt=0, description="The first retry's pause; doubles.")
    notification_backoff_max_seconds: float = Field(
        300.0, gt=0, description="The longest pause between tries."
    )
    dead_letter_threshold: int = Field(
        10, ge=0, description="Dead letters in one window that make a notification (once a window); 0: never."
    )
    dead_letter_window_seconds: int = Field(3600, ge=60, description="The dead-letter counting window.")
