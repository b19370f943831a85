from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cascade.settings import RegistryClientSettings

__all__ = ["MonitorSettings"]


class MonitorSettings(RegistryClientSettings):
    model_config = SettingsConfigDict(env_prefix="CASCADE_MONITOR_", extra="ignore", frozen=True)

    grpc_port: int = Field(50055, description="gRPC port of MonitorService.")
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the monitor's database (references, reports, verdicts, drift"
        " events, rollout steps), e.g. postgresql+psycopg://user:pw@host/db, which replicas can share;"
        " empty means SQLite (WAL) at <data_dir>/monitor.sqlite3.",
    )
    database_sync_each_commit: bool = Field(
        False,
        description="Flush every commit to disk before acknowledging the event it stores. Off: a commit"
        " survives the monitor being killed at any point, but the last moments of prediction windows"
        " may be lost if the machine goes down (SQLite synchronous=NORMAL, PostgreSQL"
        " synchronous_commit=off). An fsync per sampled prediction would bound the monitor's rate.",
    )
    ingest_address: str = Field(
        "127.0.0.1:50051", description="host:port of ingest, which serves the reference dataset versions."
    )
    window_size: int = Field(
        200, ge=2, description="Count window: the most recent prediction rows compared with the reference."
    )
    window_seconds: float = Field(
        0.0,
        ge=0.0,
        description="Time window: only rows logged this many seconds ago or later are compared (0: off). "
        "Combines with the count window: the latest `window_size` rows, as far as they are this young.",
    )
    feature_tests: dict[str, str] = Field(
        default_factory=dict,
        description='Drift test per feature, JSON, e.g. {"mean radius": "psi"}: ks, chisquare, z, '
        "wasserstein, jensenshannon or psi. Features not named get Evidently's default test; the "
        'predicted output is named "prediction".',
    )
    categorical_features: list[str] = Field(
        default_factory=list,
        description="Features tested as categorical (JSON list); the others are numeric.",
    )
    test_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description='Threshold per test name, JSON, e.g. {"wasserstein": 0.2}; defaults: p < 0.05 for ks, '
        "chisquare and z (or `p_value_threshold`), distance >= 0.1 for wasserstein, jensenshannon, psi.",
    )
    dataset_drift_share: float = Field(
        0.5, gt=0.0, le=1.0, description="The dataset drifts when at least this share of features drift."
    )
    retrain_models: str = Field(
        "*", description="Glob of the models whose drift or decay emits *drift detected* (and so retrains)."
    )
    trigger_after: int = Field(
        2,
        ge=1,
        description="Hysteresis: consecutive drifted reports needed before *drift detected*. Two: a lone "
        "false alarm (at most `false_alarm_rate` of reports) retrains nothing, and a real shift, which "
        "persists, costs only `evaluate_every` more rows to confirm.",
    )
    cooldown_seconds: float = Field(
        600.0, ge=0.0, description="After *drift detected*, none for the same model during this long."
    )
    decay_threshold: float = Field(
        0.1,
        ge=0.0,
        description="Decay when the labelled window's metric is this much below the champion's "
        "validation metric.",
    )
    labels_window: int = Field(200, ge=1, description="Most recent labelled predictions measured for decay.")
    min_labels: int = Field(30, ge=1, description="New labelled rows between two decay measurements.")
    remembered_requests: int = Field(
        10000, ge=1, description="Logged requests kept, per model, for labels arriving later to join."
    )
    batch_max_records: int = Field(
        64,
        ge=1,
        le=512,
        description="Logged predictions (and labels) taken from Kafka at once, at most: a batch's "
        "events for one model are appended in one store transaction, its offsets committed after it.",
    )
    drift_mode: Literal["calibrated", "evidently"] = Field(
        "calibrated",
        description="calibrated: each feature's threshold is calibrated on the champion's reference for "
        "the window size, so that a report on unshifted traffic drifts at most `false_alarm_rate` of the "
        "time; evidently: Evidently's default tests (and `feature_tests`, `test_thresholds`), the "
        "dataset drifting when `dataset_drift_share` of the features do.",
    )
    false_alarm_rate: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="calibrated mode: the share of reports on unshifted traffic that drift.",
    )
    calibration_draws: int = Field(
        200,
        ge=10,
        description="calibrated mode: windows drawn from the reference to calibrate each champion.",
    )
    feedback_min_rows: int = Field(
        50,
        ge=1,
        description="Labelled production rows needed before a drift event sends them to ingest as a "
        "feedback batch to retrain on (fewer: the drift retrains only on a newer dataset version).",
    )
    feedback_max_rows: int = Field(
        10000, ge=1, description="Most recent labelled production rows kept, per model, for a feedback batch."
    )
    evaluate_every: int = Field(
        50, ge=1, description="New prediction rows, per model, between two drift evaluations."
    )
    p_value_threshold: float = Field(
        0.05, gt=0.0, lt=1.0, description="A feature drifts when its test's p-value is below this."
    )
    attribution_rows: int = Field(
        100,
        ge=1,
        description="Drift explained: the latest window rows whose attributions are compared, when a window "
        "drifts, with those of four times as many reference rows (a fixed sample, once per champion; as "
        "many with KernelSHAP, which may cut both to fit `attribution_max_evaluations`).",
    )
    attribution_background_rows: int = Field(
        100,
        ge=1,
        description="Drift explained: background rows the attributions integrate against (the version's "
        "`explain_background` tag, else a sample of the reference rows).",
    )
    attribution_max_evaluations: int = Field(
        500_000,
        ge=1,
        description="Drift explained: model rows one explanation may evaluate; over it, the drift is "
        "reported unexplained.",
    )
    attribution_seconds: float = Field(
        10.0,
        gt=0.0,
        description="Drift explained: deadline of one explanation (reference or window); it runs while "
        "the model's window waits, so keep it short.",
    )
    attribution_features: int = Field(
        10,
        ge=1,
        le=100,
        description="Drift explained: features a report (and its event) lists, largest move first.",
    )
    rollout_tick_seconds: float = Field(
        2.0,
        gt=0.0,
        description="How often the rollout policy judges each running rollout step: advance, roll back "
        "or hold.",
    )
    rpc_timeout_seconds: float = Field(
        60.0, gt=0.0, description="Deadline of each call to the registry or ingest, download included."
    )
