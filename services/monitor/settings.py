from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings

__all__ = ["MonitorSettings"]


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CASCADE_MONITOR_", extra="ignore", frozen=True)

    grpc_port: int = Field(50055, description="gRPC port of MonitorService.")
    registry_address: str = Field(
        "127.0.0.1:50054",
        description="host:port of the registry, asked which dataset a model was trained on.",
    )
    ingest_address: str = Field(
        "127.0.0.1:50051", description="host:port of ingest, which serves the reference dataset versions."
    )
    window_size: int = Field(
        200, ge=2, description="Most recent prediction rows compared with the reference."
    )
    evaluate_every: int = Field(
        50, ge=1, description="New prediction rows, per model, between two drift evaluations."
    )
    p_value_threshold: float = Field(
        0.05, gt=0.0, lt=1.0, description="A feature drifts when its test's p-value is below this."
    )
    rpc_timeout_seconds: float = Field(
        60.0, gt=0.0, description="Deadline of each call to the registry or ingest, download included."
    )
