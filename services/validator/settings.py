from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cascade.settings import RegistryClientSettings


class ValidatorSettings(RegistryClientSettings):
    model_config = SettingsConfigDict(env_prefix="CASCADE_VALIDATOR_", extra="ignore", frozen=True)

    grpc_port: int = Field(50053, description="gRPC port (health and reflection).")
    ingest_address: str = Field("127.0.0.1:50051", description="Where IngestService answers.")
    holdout_fraction: float = Field(
        0.2, description="Must match the trainer's: the rows it never trained on."
    )
    min_rows: int = Field(10, description="Fewest fresh rows a verdict may rest on.")
    min_accuracy: float = Field(0.7, description="Floor of a classifier's accuracy on fresh data.")
    min_r2: float = Field(0.0, description="Floor of a regressor's R² on fresh data.")
    max_regression: float = Field(0.02, description="How much worse than the champion a candidate may score.")
    latency_budget_ms: float = Field(20.0, description="Budget of the one-row p99 in onnxruntime, in ms.")
    max_artifact_bytes: int = Field(200 * 1024 * 1024, description="Largest ONNX artifact that may serve.")
    model_thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='Per-model overrides of the thresholds above, e.g. {"fraud": {"min_accuracy": 0.95}}.',
    )
