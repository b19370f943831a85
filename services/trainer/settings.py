from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cascade.services.trainer.attribution import MAX_BACKGROUND_ROWS, ExplainLimits
from cascade.services.trainer.distributed import StudyStorage
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
    explain_background_rows: int = Field(
        MAX_BACKGROUND_ROWS,
        ge=1,
        le=MAX_BACKGROUND_ROWS,
        description="Training rows kept on each version as its explanation background (the "
        "`explain_background` tag), drawn with the run's seed.",
    )
    attribution_rows: int = Field(
        200, ge=1, description="Held-out rows whose attributions make a version's `global_attribution`."
    )
    attribution_max_evaluations: int = Field(
        500_000,
        ge=1,
        description="Model rows the global attribution may evaluate (a model-agnostic explanation costs "
        "background rows x samples per explained row); over it, the version has no global attribution.",
    )
    attribution_seconds: float = Field(
        20.0, gt=0.0, description="Deadline of a version's global attribution; past it, the version has none."
    )
    out_of_core_rows: int = Field(
        1_000_000,
        ge=1,
        description="A dataset version with more rows than this is not loaded whole: its Parquet file is "
        "spooled to the data dir and read segment by segment, and only the families that can learn that "
        "way are fitted (ridge, linear_regression, logistic_regression; services/trainer/out_of_core.py).",
    )

    study_storage_url: str | None = Field(
        None,
        description="A database URL (SQLAlchemy's, e.g. postgresql+psycopg://...) where hyperparameter "
        "studies are kept, so the trainer replicas share one study per run: the replica that got the "
        "event puts the trial budget in, every replica that joins runs trials, the budget holds across "
        "them, and a redelivered event resumes its study. None: each run's study is in memory.",
    )
    study_heartbeat_seconds: int = Field(
        10, ge=1, description="How often a replica running a trial of a shared study says it is alive."
    )
    study_grace_seconds: int = Field(
        30,
        ge=2,
        description="How long a trial of a shared study may go without a heartbeat before another "
        "replica marks it failed and queues it again (its replica is taken for dead).",
    )

    def study_storage(self) -> StudyStorage | None:
        if self.study_storage_url is None:
            return None
        return StudyStorage(self.study_storage_url, self.study_heartbeat_seconds, self.study_grace_seconds)

    def explain_limits(self) -> ExplainLimits:
        return ExplainLimits(
            background_rows=self.explain_background_rows,
            rows=self.attribution_rows,
            max_evaluations=self.attribution_max_evaluations,
            seconds=self.attribution_seconds,
        )
