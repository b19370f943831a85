from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cascade.settings import RegistryClientSettings


class TrainerSettings(RegistryClientSettings):
    model_config = SettingsConfigDict(env_prefix="CASCADE_TRAINER_", extra="ignore", frozen=True)

    grpc_port: int = Field(50052, description="gRPC port (health and reflection).")
    ingest_address: str = Field("127.0.0.1:50051", description="Where IngestService answers.")
    seed: int = Field(42, description="Random seed of splits and estimators: same data, same model.")
    cv_folds: int = Field(3, description="Cross-validation folds of the hyperparameter search.")
    holdout_fraction: float = Field(0.2, description="Share of rows held out for parity and validation.")
    allow_pickle_import: bool = Field(
        False,
        description="Accept pickled scikit-learn models in ImportModel. Unpickling runs arbitrary code "
        "with the trainer's rights: turn it on only where everyone holding trainer:train is trusted.",
    )
    max_import_bytes: int = Field(256 * 1024 * 1024, description="Largest model file ImportModel accepts.")
