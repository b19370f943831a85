"""The events that cascade between services, and the topics they travel on.

Every event is a small, versioned pydantic model with a CloudEvents-style envelope. It travels as
JSON, keyed by `subject` (the dataset or model name) so one model's events stay in order, with the
envelope mirrored into CloudEvents binary-mode headers (`ce_*`) for routers that never parse bodies.
Payloads (datasets, ONNX files) never ride on events: they move over gRPC streams.

Events stay small: each type has a bound on its serialized size (`Event.MAX_BYTES`, below the
producers' 1 MiB request limit), checked by `Event.encoded()` before an event is stored in an outbox
or published, so an event too large fails where it is made, with the limit, not in the producer.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from faststream.kafka.schemas.topic import Topic as KafkaTopic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade.errors import InvalidArgument

__all__ = [
    "LATENCY_BOUNDS_MS",
    "DataArrived",
    "DriftDetected",
    "Event",
    "EventTooLarge",
    "GateResult",
    "LabelsArrived",
    "LiveTrafficReported",
    "ModelAliasChanged",
    "ModelApprovalDecided",
    "ModelApprovalRequested",
    "ModelLoadFailed",
    "ModelPromoted",
    "ModelTrafficChanged",
    "ModelTrained",
    "ModelValidated",
    "ModelVersionCreated",
    "ModelVersionStatusChanged",
    "PredictionLogged",
    "PredictionsCompared",
    "RawRecords",
    "RetrainCause",
    "Topics",
    "TrainingProgress",
    "TrainingRequested",
    "VersionLiveStats",
    "cloudevent_headers",
    "decode_event",
]


def _now() -> datetime:
    return datetime.now(UTC)


class EventTooLarge(InvalidArgument):
    """An event whose JSON exceeds its type's `MAX_BYTES`."""


class Event(BaseModel):
    """The envelope. Subclasses fix `type` to a versioned literal and name their topic."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    TOPIC: ClassVar[str]
    # Below the producers' max.request.size (1 MiB) with room for the key and the ce_* headers.
    # Types whose content is bounded by design declare a smaller bound.
    MAX_BYTES: ClassVar[int] = 900 * 1024

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    type: str
    source: str = Field(description="The service that emitted the event, as a URI reference.")
    time: datetime = Field(default_factory=_now)
    subject: str = Field(min_length=1, description="Dataset or model name; also the Kafka key.")
    # Causal ids: what this event descends from, so any consumer can walk lineage.
    dataset_version: str | None = None
    training_run: str | None = None
    model_version: int | None = None

    def encoded(self) -> bytes:
        """The event as JSON, refused with `EventTooLarge` if it exceeds its type's bound."""
        data = self.model_dump_json().encode()
        if len(data) > self.MAX_BYTES:
            raise EventTooLarge(
                f"a {self.type} event of {len(data)} bytes exceeds its limit of {self.MAX_BYTES} bytes"
            )
        return data


def decode_event(event_type: str, data: str | bytes) -> Event:
    """Parse an event stored as JSON with its `type` (an outbox row) into its class."""
    for cls in _event_classes(Event):
        if cls.model_fields["type"].default == event_type:
            return cls.model_validate_json(data)
    raise InvalidArgument(f"unknown event type {event_type!r}")


def _event_classes(base: type[Event]) -> list[type[Event]]:
    return [c for sub in base.__subclasses__() for c in (sub, *_event_classes(sub))]


def cloudevent_headers(event: Event) -> dict[str, str]:
    """CloudEvents Kafka binary-mode headers mirroring the envelope."""
    headers = {
        "ce_specversion": event.specversion,
        "ce_id": event.id,
        "ce_type": event.type,
        "ce_source": event.source,
        "ce_time": event.time.isoformat(),
        "ce_subject": event.subject,
    }
    # Extension attribute names must be lower-case alphanumerics.
    if event.dataset_version is not None:
        headers["ce_datasetversion"] = event.dataset_version
    if event.training_run is not None:
        headers["ce_trainingrun"] = event.training_run
    if event.model_version is not None:
        headers["ce_modelversion"] = str(event.model_version)
    return headers


class DataArrived(Event):
    """A dataset has a new version. Its features and profile, which grow with the dataset's width,
    are not carried: they are the version's, read with IngestService.GetDatasetVersion."""

    TOPIC: ClassVar[str] = "data-arrived.v1"
    # Names (dataset 128, target 256 characters) and content addresses only.
    MAX_BYTES: ClassVar[int] = 8 * 1024
    type: Literal["io.cascade.data.arrived.v1"] = "io.cascade.data.arrived.v1"

    dataset: str
    dataset_version: str
    parent_version: str | None = None
    batch_id: str
    rows: int
    target: str
    task: Literal["classification", "regression"]


class RetrainCause(BaseModel):
    """Why a model version was trained when it was not new data: carried from *drift detected*
    through *model trained* and *model validated* into the registry's alias history."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["drift", "decay", "manual"]
    event_id: str = Field(description="The id of the event (drift detected, training requested) behind it.")
    summary: str = ""
    report: dict[str, Any] = {}


class ModelTrained(Event):
    TOPIC: ClassVar[str] = "model-trained.v1"
    type: Literal["io.cascade.model.trained.v1"] = "io.cascade.model.trained.v1"

    model: str
    model_version: int
    dataset: str
    dataset_version: str
    training_run: str
    metrics: dict[str, float] = {}
    train_seconds: float = 0.0
    cause: RetrainCause | None = None  # None: trained because data arrived


class GateResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    value: float | None = None
    threshold: float | None = None
    detail: str = ""


class ModelValidated(Event):
    TOPIC: ClassVar[str] = "model-validated.v1"
    type: Literal["io.cascade.model.validated.v1"] = "io.cascade.model.validated.v1"

    model: str
    model_version: int
    champion_version: int | None = None
    passed: bool
    gates: list[GateResult]
    metrics: dict[str, float] = {}
    cause: RetrainCause | None = None  # copied from ModelTrained


class ModelPromoted(Event):
    TOPIC: ClassVar[str] = "model-promoted.v1"
    type: Literal["io.cascade.model.promoted.v1"] = "io.cascade.model.promoted.v1"

    model: str
    model_version: int
    alias: str = "champion"
    previous_version: int | None = None
    actor: str
    reason: str = ""


class ModelVersionCreated(Event):
    """The registry stored a new version (status pending until the validator's verdict)."""

    TOPIC: ClassVar[str] = "model-version-created.v1"
    type: Literal["io.cascade.model.version_created.v1"] = "io.cascade.model.version_created.v1"

    model: str
    model_version: int
    artifact_sha256: str
    artifact_size: int
    dataset: str = ""
    status: Literal["pending", "ready", "failed"] = "pending"


class ModelVersionStatusChanged(Event):
    TOPIC: ClassVar[str] = "model-version-status-changed.v1"
    type: Literal["io.cascade.model.version_status_changed.v1"] = "io.cascade.model.version_status_changed.v1"

    model: str
    model_version: int
    status: Literal["pending", "ready", "failed"]
    previous_status: Literal["pending", "ready", "failed"]
    reason: str = ""


class ModelAliasChanged(Event):
    """Any alias moved or was deleted (`champion` moves also go out as ModelPromoted, which
    serving and monitor follow)."""

    TOPIC: ClassVar[str] = "model-alias-changed.v1"
    type: Literal["io.cascade.model.alias_changed.v1"] = "io.cascade.model.alias_changed.v1"

    model: str
    alias: str
    model_version: int | None = Field(None, description="The new target; None when deleted.")
    previous_version: int | None = None
    action: Literal["set", "deleted", "rolled_back"]
    actor: str
    reason: str = ""


class ModelApprovalRequested(Event):
    """A version passed validation under the manual promotion policy: it is the challenger, and
    waits for someone who manages the model to approve it (it becomes the champion) or reject it."""

    TOPIC: ClassVar[str] = "model-approval-requested.v1"
    MAX_BYTES: ClassVar[int] = 16 * 1024  # names, numbers and a validation reason
    type: Literal["io.cascade.model.approval_requested.v1"] = "io.cascade.model.approval_requested.v1"

    model: str
    model_version: int
    champion_version: int | None = Field(None, description="The champion it would replace, if any.")
    requested_by: str = Field(description="Who asked: the validator, for a passing candidate.")
    reason: str = ""
    superseded_version: int | None = Field(
        None, description="The older pending version this request closed as superseded, if any."
    )


class ModelApprovalDecided(Event):
    """A pending approval was closed: approved (the version is now the champion, announced too as
    ModelPromoted), rejected (the champion stays), or superseded by a newer passing candidate."""

    TOPIC: ClassVar[str] = "model-approval-decided.v1"
    MAX_BYTES: ClassVar[int] = 16 * 1024
    type: Literal["io.cascade.model.approval_decided.v1"] = "io.cascade.model.approval_decided.v1"

    model: str
    model_version: int
    decision: Literal["approved", "rejected", "superseded"]
    decided_by: str = Field(description="The principal who decided; `registry` for a superseded one.")
    reason: str
    champion_version: int | None = Field(None, description="The champion after the decision.")
    superseded_by: int | None = Field(None, description="The newer version, for a superseded approval.")


class ModelLoadFailed(Event):
    """Serving refused a version (corrupt or incompatible artifact); the old one keeps serving."""

    TOPIC: ClassVar[str] = "model-load-failed.v1"
    type: Literal["io.cascade.model.load_failed.v1"] = "io.cascade.model.load_failed.v1"

    model: str
    model_version: int
    reason: str = Field(
        description="digest_mismatch, download_refused, invalid_model, incompatible or warmup_failed."
    )
    detail: str = ""
    serving_version: int | None = Field(None, description="The version that keeps serving, if any.")
    instance: str = Field("", description="The serving replica (and worker) that refused it.")


class PredictionLogged(Event):
    """A sampled inference request and its answer, for the monitor."""

    TOPIC: ClassVar[str] = "predictions.v1"
    type: Literal["io.cascade.prediction.logged.v1"] = "io.cascade.prediction.logged.v1"

    model: str
    model_version: int
    request_id: str
    features: list[str]
    inputs: list[list[float]]
    outputs: list[float]
    probabilities: list[list[float]] | None = Field(
        None, description="Per row, the predicted probability of each class (classifiers), if logged."
    )
    role: Literal["champion", "canary"] = Field(
        "champion",
        description="Which side of the model's traffic split answered: its champion or its canary.",
    )


class ModelTrafficChanged(Event):
    """A model's traffic split or rollout changed in the registry. Serving replicas re-read the split
    (GetTraffic) rather than trust the event, as they do for promotions; the monitor follows rollouts."""

    TOPIC: ClassVar[str] = "traffic-changed.v1"
    type: Literal["io.cascade.model.traffic_changed.v1"] = "io.cascade.model.traffic_changed.v1"
    MAX_BYTES: ClassVar[int] = 64 * 1024

    model: str
    revision: int = Field(description="The split's revision after the change; it only grows.")
    champion_version: int | None = None
    canary_version: int | None = None
    canary_percent: float = 0.0
    shadow_version: int | None = None
    shadow_percent: float = 0.0
    action: Literal["set", "rollout_started", "rollout_advanced", "promoted", "rolled_back"]
    rollout_version: int | None = Field(None, description="The version being rolled out, if any.")
    rollout_step: int | None = Field(None, description="Index of the rollout's step after the change.")
    actor: str
    reason: str = Field("", description="Why; for a rollback, its cause (the breach and its measured value).")


# Upper bounds (milliseconds) of the latency histogram buckets in LiveTrafficReported; the last
# bucket counts everything above the last bound. Fixed, so replicas' counts add up.
LATENCY_BOUNDS_MS: tuple[float, ...] = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class VersionLiveStats(BaseModel):
    """One version's requests in one serving replica over one reporting interval."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int
    role: Literal["champion", "canary", "shadow"]
    requests: int = Field(ge=0, description="Answered (champion, canary) or scored (shadow) requests.")
    failures: int = Field(ge=0)
    latency_buckets: list[int] = Field(
        description="Counts per LATENCY_BOUNDS_MS bucket, plus one for above the last bound."
    )


class LiveTrafficReported(Event):
    """What one serving replica saw of a model whose traffic has a canary or a shadow, over one
    interval: each version's requests, failures and latencies, and the shadow scorings it dropped."""

    TOPIC: ClassVar[str] = "live-traffic.v1"
    type: Literal["io.cascade.serving.live_traffic.v1"] = "io.cascade.serving.live_traffic.v1"
    MAX_BYTES: ClassVar[int] = 64 * 1024

    model: str
    instance: str = Field(description="The serving replica (and worker).")
    traffic_revision: int = Field(description="The split the replica followed over the interval.")
    interval_seconds: float
    versions: list[VersionLiveStats] = Field(max_length=8)
    shadow_dropped: int = Field(0, ge=0, description="Shadow scorings dropped under load.")


class PredictionsCompared(Event):
    """Rows scored by both the champion and the challenger (shadow or canary) on live requests,
    sampled: each version's first output per row (a label, or a regressor's value)."""

    TOPIC: ClassVar[str] = "predictions-compared.v1"
    type: Literal["io.cascade.serving.predictions_compared.v1"] = "io.cascade.serving.predictions_compared.v1"

    model: str
    instance: str
    champion_version: int
    challenger_version: int
    challenger_role: Literal["shadow", "canary"]
    request_ids: list[str] = Field(description="Per row, the request it came from.")
    champion_outputs: list[float]
    challenger_outputs: list[float]
    challenger_failures: int = Field(0, ge=0, description="Requests the challenger failed to score.")

    @model_validator(mode="after")
    def _rows_line_up(self) -> PredictionsCompared:
        if not (len(self.request_ids) == len(self.champion_outputs) == len(self.challenger_outputs)):
            raise ValueError(
                "request_ids, champion_outputs and challenger_outputs must have one entry per row"
            )
        return self


class DriftDetected(Event):
    """The monitor's verdict that a model's champion no longer fits its traffic, with the report."""

    TOPIC: ClassVar[str] = "drift-detected.v1"
    type: Literal["io.cascade.drift.detected.v1"] = "io.cascade.drift.detected.v1"

    model: str
    model_version: int = Field(description="The champion whose reference the window was tested against.")
    kind: Literal["drift", "decay"]
    summary: str
    drifted_features: list[str] = []
    report: dict[str, Any] = Field(
        description="The drift (or decay) report, as JSON, without the distributions. A drifted window's "
        "report carries `attribution_shift` (at most the monitor's attribution_features entries of "
        "{feature, reference_share, window_share}, largest move first) and `attribution_note`."
    )
    action: Literal["retrain", "feedback", "no_new_data"] = Field(
        "retrain",
        description="What the loop does about it: retrain on the dataset's newer version; nothing here, "
        "since labelled production rows went to ingest as a feedback batch (its data-arrived retrains); "
        "or nothing, since the champion has already learned from all the data there is.",
    )


class TrainingRequested(Event):
    """Someone asked for a retrain (CLI or gRPC); queued so the replica owning the model runs it."""

    TOPIC: ClassVar[str] = "training-requested.v1"
    type: Literal["io.cascade.training.requested.v1"] = "io.cascade.training.requested.v1"

    model: str
    actor: str = "unknown"
    reason: str = ""


class TrainingProgress(Event):
    """One step of a run: a finished trial, or the run's end. Best effort, for people watching."""

    TOPIC: ClassVar[str] = "training-progress.v1"
    type: Literal["io.cascade.training.progress.v1"] = "io.cascade.training.progress.v1"

    model: str
    run_key: str = Field(description="The run's idempotency key; a manual request's id is part of it.")
    stage: Literal["started", "trial", "finished", "failed"]
    trial: int | None = None
    max_trials: int | None = None
    estimator: str | None = None
    state: str | None = None
    score: float | None = None
    best_score: float | None = None
    message: str = ""


class StudyOpened(Event):
    """A trainer replica put a run's trial budget into a shared hyperparameter study (the trainer's
    study storage setting): the other replicas join it on the same dataset version and spec until
    the budget is spent. Every replica reads this in a consumer group of its own."""

    TOPIC: ClassVar[str] = "training-studies.v1"
    MAX_BYTES: ClassVar[int] = 4 * 1024
    type: Literal["io.cascade.training.study-opened.v1"] = "io.cascade.training.study-opened.v1"

    model: str = Field(min_length=1, max_length=128)
    study: str = Field(min_length=1, max_length=64, description="The study's name in the shared storage.")
    run_key: str = Field(max_length=1024, description="The run's idempotency key.")
    dataset: str = Field(min_length=1, max_length=128)
    task: Literal["classification", "regression"]
    window_batches: int | None = Field(None, ge=1, description="As the spec says: the rows trained on.")
    spec_digest: str = Field(
        max_length=64, description="The spec the owner searches with; a joiner checks it."
    )
    owner: str = Field(max_length=256, description="The replica that opened the study.")


class LabelsArrived(BaseModel):
    """Ground truth for logged predictions, from any producer: plain JSON, no envelope required.

    Example: {"model": "breast_cancer", "request_id": "3f2c…", "label": 1}
    `request_id` is the id of the inference request (KServe `id`) whose rows are labelled; give
    `label` for a one-row request or `labels`, one per row in request order.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    TOPIC: ClassVar[str] = "labels.v1"

    model: str = Field(min_length=1, max_length=128)
    request_id: str = Field(min_length=1)
    label: float | None = None
    labels: list[float] | None = None

    @model_validator(mode="after")
    def _one_of_label_or_labels(self) -> LabelsArrived:
        if (self.label is None) == (self.labels is None):
            raise ValueError("give exactly one of `label` and `labels`")
        if self.labels is not None and not self.labels:
            raise ValueError("`labels` must not be empty")
        return self

    @property
    def values(self) -> list[float]:
        return [self.label] if self.label is not None else list(self.labels or [])


class RawRecords(BaseModel):
    """What outside producers put on the raw-records topic: plain JSON, no envelope required.

    Example: {"dataset": "breast_cancer", "records": [{"mean radius": 14.1, ..., "target": 1}]}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    TOPIC: ClassVar[str] = "ingest.records.v1"

    dataset: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    records: list[dict[str, Any]] = Field(min_length=1)
    target: str = "target"
    source: str = "kafka"


class Topics:
    """Topic names under one prefix, so several Cascades (or test runs) can share a cluster."""

    def __init__(self, prefix: str = "cascade", partitions: int = 3, replication_factor: int = 1) -> None:
        self.prefix = prefix
        self.partitions = partitions
        self.replication_factor = replication_factor

    def declared(self, event_type: type[Event] | type[RawRecords] | type[LabelsArrived]) -> KafkaTopic:
        """The topic as a consumer declares it: created with enough partitions that a consumer group
        (several trainers, say) shares the work, keyed by model so each model stays in order, and
        with as many copies as the cluster is meant to keep (topics made on first use, such as the
        dead-letter topic, get the brokers' default.replication.factor, which matches it)."""
        return KafkaTopic(
            self.for_event(event_type),
            num_partitions=self.partitions,
            replication_factor=self.replication_factor,
        )

    def for_event(self, event_type: type[Event] | type[RawRecords] | type[LabelsArrived]) -> str:
        return f"{self.prefix}.{event_type.TOPIC}"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.dead-letter.v1"
