from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from cascade.objectstore import ObjectStoreSettings
from cascade.services.registry.rollouts import DEFAULT_STEPS, RolloutPlan, RolloutStep, RolloutThresholds
from cascade.settings import ServiceSettings


class RolloutStepSetting(BaseModel):
    stage: Literal["shadow", "canary"]
    percent: float = Field(gt=0, le=100, description="The share of requests (0..100].")
    min_requests: int = Field(0, ge=0, description="Requests the challenger answers or scores first.")
    min_seconds: float = Field(0.0, ge=0, description="How long the step lasts at least.")


class RolloutThresholdsSetting(BaseModel):
    """registry.proto's RolloutThresholds; 0 turns one off."""

    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_ratio: float = Field(2.0, ge=0)
    p99_floor_ms: float = Field(5.0, ge=0)
    min_agreement: float = Field(0.9, ge=0, le=1)
    max_difference_ratio: float = Field(0.5, ge=0)
    max_prediction_drift: float = Field(0.25, ge=0)
    max_metric_drop: float = Field(0.05, ge=0, le=1)
    min_compared_rows: int = Field(100, ge=0)


class RolloutPlanSetting(BaseModel):
    """The rollout plan of models that set none, as JSON in CASCADE_REGISTRY_DEFAULT_ROLLOUT_PLAN."""

    steps: list[RolloutStepSetting] = Field(
        default_factory=lambda: [RolloutStepSetting(**asdict(step)) for step in DEFAULT_STEPS],
        min_length=1,
    )
    thresholds: RolloutThresholdsSetting = Field(default_factory=RolloutThresholdsSetting)

    def plan(self) -> RolloutPlan:
        return RolloutPlan(
            steps=tuple(RolloutStep(**step.model_dump()) for step in self.steps),
            thresholds=RolloutThresholds(**self.thresholds.model_dump()),
        ).checked()


class RegistrySettings(ServiceSettings, ObjectStoreSettings):
    model_config = SettingsConfigDict(env_prefix="CASCADE_REGISTRY_", extra="ignore", frozen=True)

    grpc_port: int = Field(50054, description="gRPC port of RegistryService.")
    ingest_address: str = Field("127.0.0.1:50051", description="Where IngestService answers (for lineage).")
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the metadata database, e.g. postgresql+psycopg://user:pw@host/db;"
        " empty means SQLite (WAL) at <data_dir>/registry.sqlite3.",
    )
    artifact_url: str = Field(
        "",
        description="Where artifacts are stored: s3://bucket/prefix (with the s3_* settings), or a"
        " directory; empty means <data_dir>/artifacts. Replicas of the registry share an s3:// store.",
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
    outbox_lease_seconds: float = Field(
        5.0,
        gt=0,
        description="Replicas sharing the database publish the outbox, and POST webhooks, one at a time,"
        " whichever holds the lease; a holder that dies lets it lapse after this long (webhooks: plus"
        " 1.5 times the POST timeout), and another takes over.",
    )
    default_permission: Literal["none", "read", "edit", "manage"] = Field(
        "read",
        description="The level an authenticated principal has on a model that granted it nothing.",
    )
    promotion_policy: Literal["automatic", "manual", "progressive"] = Field(
        "automatic",
        description="The default for models that set none (UpdateModel, `cascade models policy`)."
        " automatic: a passed candidate becomes champion; manual: it becomes challenger;"
        " progressive: it becomes challenger and rolls out through the model's rollout plan.",
    )
    default_rollout_plan: RolloutPlanSetting = Field(
        default_factory=RolloutPlanSetting,
        description='The rollout plan of models that set none, as JSON: {"steps": [{"stage": "shadow"|'
        '"canary", "percent", "min_requests", "min_seconds"}], "thresholds": {...}}; default shadow 100%,'
        " canary 10%, canary 50% (200 requests and 10 s each), then champion.",
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
