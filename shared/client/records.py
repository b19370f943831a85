"""The plain, typed records Cascade's clients take and return, in place of protobuf messages.

Each is a frozen dataclass with the field names of its message, built by `of(message)`; callers
never see a protobuf. Timestamps are timezone-aware datetimes; an unset one is None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from cascade.stubs.cascade.explain.v1 import explain_pb2
from cascade.stubs.cascade.ingest.v1 import ingest_pb2
from cascade.stubs.cascade.monitor.v1 import monitor_pb2
from cascade.stubs.cascade.registry.v1 import registry_pb2
from cascade.stubs.cascade.trainer.v1 import trainer_pb2

__all__ = [
    "AliasMove",
    "Approval",
    "ApprovalStatus",
    "AttributionShift",
    "Batch",
    "BatchReport",
    "Dataset",
    "DatasetVersion",
    "DriftReport",
    "Explained",
    "FeatureDrift",
    "FeatureProfile",
    "GateVerdict",
    "GlobalAttribution",
    "ImportResult",
    "Lineage",
    "Model",
    "ModelVersion",
    "Performance",
    "RejectedRow",
    "Rollout",
    "RolloutPlan",
    "RolloutStage",
    "RolloutState",
    "RolloutStep",
    "RolloutThresholds",
    "RowAttribution",
    "StoredTrainingSpec",
    "TensorSpec",
    "Traffic",
    "TrainingRun",
    "UploadResult",
    "VersionStatus",
]


def _time(stamp: Timestamp, present: bool = True) -> datetime | None:
    if not present or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def _optional(message: Any, name: str) -> float | None:
    return float(getattr(message, name)) if message.HasField(name) else None


# Ingest


@dataclass(frozen=True)
class RejectedRow:
    row: int
    reason: str
    values_json: str = ""


@dataclass(frozen=True)
class BatchReport:
    rows_received: int
    rows_accepted: int
    rows_rejected: int
    rows_duplicate: int
    rows_repaired: int
    rows_flagged: int
    rejected: tuple[RejectedRow, ...]
    issues: dict[str, int]

    @classmethod
    def of(cls, report: ingest_pb2.BatchReport) -> BatchReport:
        return cls(
            rows_received=report.rows_received,
            rows_accepted=report.rows_accepted,
            rows_rejected=report.rows_rejected,
            rows_duplicate=report.rows_duplicate,
            rows_repaired=report.rows_repaired,
            rows_flagged=report.rows_flagged,
            rejected=tuple(RejectedRow(r.row, r.reason, r.values_json) for r in report.rejected),
            issues=dict(report.issues),
        )


@dataclass(frozen=True)
class Batch:
    """One uploaded batch of a dataset, with what cleaning made of it."""

    batch_id: str
    # The version the batch made; empty when it added no rows.
    version: str
    source: str
    received_at: datetime | None
    report: BatchReport

    @classmethod
    def of(cls, batch: ingest_pb2.Batch) -> Batch:
        return cls(
            batch_id=batch.batch_id,
            version=batch.version,
            source=batch.source,
            received_at=_time(batch.received_at, batch.HasField("received_at")),
            report=BatchReport.of(batch.report),
        )


@dataclass(frozen=True)
class UploadResult:
    """What ingest made of one uploaded batch."""

    batch_id: str
    dataset_version: str
    # False when the same bytes were uploaded before: the version is the one they made then.
    created: bool
    report: BatchReport
    # Stored, but its data-arrived event waits in ingest's outbox until Kafka takes it.
    event_pending: bool

    @classmethod
    def of(cls, response: ingest_pb2.UploadBatchResponse) -> UploadResult:
        return cls(
            batch_id=response.batch_id,
            dataset_version=response.dataset_version,
            created=response.created,
            report=BatchReport.of(response.report),
            event_pending=response.event_pending,
        )


@dataclass(frozen=True)
class FeatureProfile:
    name: str
    type: str
    count: int
    missing_rate: float
    mean: float
    std: float
    min: float
    max: float
    quantiles: tuple[float, ...]
    histogram_edges: tuple[float, ...]
    histogram_counts: tuple[int, ...]
    categories: dict[str, int]

    @classmethod
    def of(cls, profile: ingest_pb2.FeatureProfile) -> FeatureProfile:
        return cls(
            name=profile.name,
            type=profile.type,
            count=profile.count,
            missing_rate=profile.missing_rate,
            mean=profile.mean,
            std=profile.std,
            min=profile.min,
            max=profile.max,
            quantiles=tuple(profile.quantiles),
            histogram_edges=tuple(profile.histogram_edges),
            histogram_counts=tuple(profile.histogram_counts),
            categories=dict(profile.categories),
        )


@dataclass(frozen=True)
class DatasetVersion:
    dataset: str
    version: str
    parent: str
    batch_ids: tuple[str, ...]
    rows: int
    target: str
    features: tuple[str, ...]
    task: str
    profile: tuple[FeatureProfile, ...]
    created_at: datetime | None
    size_bytes: int
    segments: tuple[str, ...]

    @classmethod
    def of(cls, version: ingest_pb2.DatasetVersion) -> DatasetVersion:
        return cls(
            dataset=version.dataset,
            version=version.version,
            parent=version.parent,
            batch_ids=tuple(version.batch_ids),
            rows=version.rows,
            target=version.target,
            features=tuple(version.features),
            task=version.task,
            profile=tuple(FeatureProfile.of(p) for p in version.profile),
            created_at=_time(version.created_at, version.HasField("created_at")),
            size_bytes=version.size_bytes,
            segments=tuple(version.segments),
        )


@dataclass(frozen=True)
class Dataset:
    dataset: str
    target: str
    task: str
    # Declared by RegisterDataset; otherwise inferred from the first batch.
    declared: bool
    head_version: str
    versions: int
    # The whole schema as JSON (features, target, task, policy): the form register_dataset takes.
    schema: dict[str, Any]

    @classmethod
    def of(cls, dataset: ingest_pb2.Dataset) -> Dataset:
        return cls(
            dataset=dataset.dataset,
            target=dataset.schema.target,
            task=dataset.schema.task,
            declared=dataset.schema.declared,
            head_version=dataset.head_version,
            versions=dataset.versions,
            schema=MessageToDict(dataset.schema, preserving_proto_field_name=True),
        )


# Registry


class VersionStatus(StrEnum):
    unspecified = "unspecified"
    pending = "pending"
    ready = "ready"
    failed = "failed"

    @classmethod
    def of(cls, status: int) -> VersionStatus:
        return next((s for s, value in _STATUS_VALUES.items() if value == status), cls.unspecified)

    @property
    def proto(self) -> registry_pb2.VersionStatus.ValueType:
        return _STATUS_VALUES[self]


_STATUS_VALUES: dict[VersionStatus, registry_pb2.VersionStatus.ValueType] = {
    VersionStatus.unspecified: registry_pb2.VERSION_STATUS_UNSPECIFIED,
    VersionStatus.pending: registry_pb2.VERSION_STATUS_PENDING,
    VersionStatus.ready: registry_pb2.VERSION_STATUS_READY,
    VersionStatus.failed: registry_pb2.VERSION_STATUS_FAILED,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    seed: int
    train_seconds: float
    code_version: str

    @classmethod
    def of(cls, run: registry_pb2.TrainingRun) -> TrainingRun:
        return cls(
            run_id=run.run_id,
            params=dict(run.params),
            metrics=dict(run.metrics),
            seed=run.seed,
            train_seconds=run.train_seconds,
            code_version=run.code_version,
        )


def _tensors(specs: Any) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in specs)


@dataclass(frozen=True)
class GateVerdict:
    """One gate of the validator's verdict on a version: its measured value against its threshold."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str

    def describe(self) -> str:
        """`accuracy_gate failed: 0.91 vs threshold 0.95 (detail)`, for one-line outcomes."""
        measured = ""
        if self.value is not None:
            measured = f": {self.value:.4g}"
            if self.threshold is not None:
                measured += f" vs threshold {self.threshold:.4g}"
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.name} {'passed' if self.passed else 'failed'}{measured}{detail}"


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    status: VersionStatus
    artifact_sha256: str
    artifact_size: int
    dataset: str
    dataset_version: str
    run: TrainingRun
    aliases: tuple[str, ...]
    tags: dict[str, str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    created_at: datetime | None
    idempotency_key: str
    description: str
    # The validator's verdict: None until it has judged the version.
    validation_passed: bool | None
    validation_report_json: str

    @classmethod
    def of(cls, version: registry_pb2.ModelVersion) -> ModelVersion:
        # The registry always sends the summary; an empty report means no verdict yet.
        judged = version.HasField("validation") and bool(version.validation.report_json)
        return cls(
            model=version.model,
            version=version.version,
            status=VersionStatus.of(version.status),
            artifact_sha256=version.artifact_sha256,
            artifact_size=version.artifact_size,
            dataset=version.dataset,
            dataset_version=version.dataset_version,
            run=TrainingRun.of(version.run),
            aliases=tuple(version.aliases),
            tags=dict(version.tags),
            inputs=_tensors(version.inputs),
            outputs=_tensors(version.outputs),
            created_at=_time(version.created_at, version.HasField("created_at")),
            idempotency_key=version.idempotency_key,
            description=version.description,
            validation_passed=version.validation.passed if judged else None,
            validation_report_json=version.validation.report_json if judged else "",
        )

    @property
    def gates(self) -> tuple[GateVerdict, ...]:
        """The validator's gates for this version, in its order (empty before a verdict, or for a
        report that is not the validator's)."""
        try:
            report = json.loads(self.validation_report_json) if self.validation_report_json else {}
        except ValueError:
            return ()
        gates = report.get("gates") if isinstance(report, dict) else None
        if not isinstance(gates, list):
            return ()
        return tuple(
            GateVerdict(
                name=str(gate.get("name", "?")),
                passed=bool(gate.get("passed")),
                value=_number(gate.get("value")),
                threshold=_number(gate.get("threshold")),
                detail=str(gate.get("detail") or ""),
            )
            for gate in gates
            if isinstance(gate, dict)
        )

    @property
    def failed_gates(self) -> tuple[GateVerdict, ...]:
        return tuple(gate for gate in self.gates if not gate.passed)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


_POLICY_NAMES = {
    registry_pb2.PROMOTION_POLICY_AUTOMATIC: "automatic",
    registry_pb2.PROMOTION_POLICY_MANUAL: "manual",
    registry_pb2.PROMOTION_POLICY_PROGRESSIVE: "progressive",
}


@dataclass(frozen=True)
class Model:
    name: str
    latest_version: int
    aliases: dict[str, int]
    description: str
    tags: dict[str, str]
    # "automatic", "manual" or "progressive": what becomes of a version that passes its gates.
    promotion_policy: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    created_at: datetime | None

    @classmethod
    def of(cls, model: registry_pb2.Model) -> Model:
        policy = model.effective_promotion_policy or model.promotion_policy
        return cls(
            name=model.name,
            latest_version=model.latest_version,
            aliases=dict(model.aliases),
            description=model.description,
            tags=dict(model.tags),
            promotion_policy=_POLICY_NAMES.get(policy, "automatic"),
            inputs=_tensors(model.inputs),
            outputs=_tensors(model.outputs),
            created_at=_time(model.created_at, model.HasField("created_at")),
        )


@dataclass(frozen=True)
class AliasMove:
    alias: str
    # 0: the alias did not exist before (from) or was deleted (to).
    from_version: int
    to_version: int
    actor: str
    reason: str
    at: datetime | None
    # For `canary` and `shadow`: the share of requests (0..100) the move gave the version.
    traffic_percent: float = 0.0

    @classmethod
    def of(cls, move: registry_pb2.AliasMove) -> AliasMove:
        return cls(
            alias=move.alias,
            from_version=move.from_version,
            to_version=move.to_version,
            actor=move.actor,
            reason=move.reason,
            at=_time(move.at, move.HasField("at")),
            traffic_percent=move.traffic_percent,
        )


# Progressive delivery

RolloutStage = Literal["shadow", "canary"]
RolloutState = Literal["running", "promoted", "rolled_back"]
_STAGE_NUMBERS: dict[RolloutStage, registry_pb2.RolloutStage.ValueType] = {
    "shadow": registry_pb2.ROLLOUT_STAGE_SHADOW,
    "canary": registry_pb2.ROLLOUT_STAGE_CANARY,
}
_STAGES: dict[int, RolloutStage] = {number: name for name, number in _STAGE_NUMBERS.items()}
_ROLLOUT_STATES: dict[int, RolloutState] = {
    registry_pb2.ROLLOUT_STATE_RUNNING: "running",
    registry_pb2.ROLLOUT_STATE_PROMOTED: "promoted",
    registry_pb2.ROLLOUT_STATE_ROLLED_BACK: "rolled_back",
}


@dataclass(frozen=True)
class RolloutStep:
    """One step of a rollout plan: the challenger as shadow (scores `percent` of requests beside
    the champion) or canary (answers `percent` of them), until it has answered or scored
    `min_requests` and `min_seconds` have passed."""

    stage: RolloutStage
    percent: float
    min_requests: int = 0
    min_seconds: float = 0.0

    @classmethod
    def of(cls, step: registry_pb2.RolloutStep) -> RolloutStep:
        return cls(
            stage=_STAGES.get(step.stage, "shadow"),
            percent=step.percent,
            min_requests=step.min_requests,
            min_seconds=step.min_seconds,
        )

    @property
    def proto(self) -> registry_pb2.RolloutStep:
        return registry_pb2.RolloutStep(
            stage=_STAGE_NUMBERS.get(self.stage, registry_pb2.ROLLOUT_STAGE_UNSPECIFIED),
            percent=self.percent,
            min_requests=self.min_requests,
            min_seconds=self.min_seconds,
        )


@dataclass(frozen=True)
class RolloutThresholds:
    """What a challenger is held to on live traffic; one breach rolls it back, 0 turns one off
    (registry.proto says what each measures)."""

    max_error_rate: float = 0.01
    max_p99_ratio: float = 2.0
    p99_floor_ms: float = 5.0
    min_agreement: float = 0.9
    max_difference_ratio: float = 0.5
    max_prediction_drift: float = 0.25
    max_metric_drop: float = 0.05
    min_compared_rows: int = 100

    @classmethod
    def of(cls, thresholds: registry_pb2.RolloutThresholds) -> RolloutThresholds:
        return cls(
            max_error_rate=thresholds.max_error_rate,
            max_p99_ratio=thresholds.max_p99_ratio,
            p99_floor_ms=thresholds.p99_floor_ms,
            min_agreement=thresholds.min_agreement,
            max_difference_ratio=thresholds.max_difference_ratio,
            max_prediction_drift=thresholds.max_prediction_drift,
            max_metric_drop=thresholds.max_metric_drop,
            min_compared_rows=thresholds.min_compared_rows,
        )

    @property
    def proto(self) -> registry_pb2.RolloutThresholds:
        return registry_pb2.RolloutThresholds(
            max_error_rate=self.max_error_rate,
            max_p99_ratio=self.max_p99_ratio,
            p99_floor_ms=self.p99_floor_ms,
            min_agreement=self.min_agreement,
            max_difference_ratio=self.max_difference_ratio,
            max_prediction_drift=self.max_prediction_drift,
            max_metric_drop=self.max_metric_drop,
            min_compared_rows=self.min_compared_rows,
        )


@dataclass(frozen=True)
class RolloutPlan:
    """A model's rollout plan: its steps in order (the version becomes champion after the last)
    and the thresholds every step holds it to. `is_default`: the registry's, the model set none."""

    model: str
    steps: tuple[RolloutStep, ...]
    thresholds: RolloutThresholds
    is_default: bool = False
    actor: str = ""
    updated_at: datetime | None = None

    @classmethod
    def of(cls, plan: registry_pb2.RolloutPlan) -> RolloutPlan:
        return cls(
            model=plan.model,
            steps=tuple(RolloutStep.of(step) for step in plan.steps),
            thresholds=RolloutThresholds.of(plan.thresholds),
            is_default=plan.is_default,
            actor=plan.actor,
            updated_at=_time(plan.updated_at, plan.HasField("updated_at")),
        )


@dataclass(frozen=True)
class Rollout:
    """A version rolled out through a plan: running at `step`, or ended (promoted, rolled back)
    with its `cause`."""

    version: int
    state: RolloutState
    step: int
    started_at: datetime | None
    step_started_at: datetime | None
    cause: str
    plan: RolloutPlan

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def current_step(self) -> RolloutStep | None:
        return self.plan.steps[self.step] if 0 <= self.step < len(self.plan.steps) else None

    @classmethod
    def of(cls, rollout: registry_pb2.Rollout) -> Rollout:
        return cls(
            version=rollout.version,
            state=_ROLLOUT_STATES.get(rollout.state, "running"),
            step=rollout.step,
            started_at=_time(rollout.started_at, rollout.HasField("started_at")),
            step_started_at=_time(rollout.step_started_at, rollout.HasField("step_started_at")),
            cause=rollout.cause,
            plan=RolloutPlan.of(rollout.plan),
        )


@dataclass(frozen=True)
class Traffic:
    """Which versions of a model take its requests: the champion answers, the canary answers
    `canary_percent` of them, the shadow scores `shadow_percent` beside the champion without
    answering. Versions are 0 when absent. `revision` grows with every change."""

    model: str
    champion_version: int
    canary_version: int
    canary_percent: float
    shadow_version: int
    shadow_percent: float
    revision: int
    actor: str
    reason: str
    updated_at: datetime | None
    # The model's latest rollout; None before its first.
    rollout: Rollout | None

    @classmethod
    def of(cls, traffic: registry_pb2.Traffic) -> Traffic:
        return cls(
            model=traffic.model,
            champion_version=traffic.champion_version,
            canary_version=traffic.canary_version,
            canary_percent=traffic.canary_percent,
            shadow_version=traffic.shadow_version,
            shadow_percent=traffic.shadow_percent,
            revision=traffic.revision,
            actor=traffic.actor,
            reason=traffic.reason,
            updated_at=_time(traffic.updated_at, traffic.HasField("updated_at")),
            rollout=Rollout.of(traffic.rollout) if traffic.HasField("rollout") else None,
        )


ApprovalStatus = Literal["pending", "approved", "rejected", "superseded"]
_APPROVAL_STATUSES: dict[int, ApprovalStatus] = {
    registry_pb2.APPROVAL_STATUS_PENDING: "pending",
    registry_pb2.APPROVAL_STATUS_APPROVED: "approved",
    registry_pb2.APPROVAL_STATUS_REJECTED: "rejected",
    registry_pb2.APPROVAL_STATUS_SUPERSEDED: "superseded",
}


@dataclass(frozen=True)
class Approval:
    """A version that passed validation under the manual policy, awaiting (or past) the decision of
    someone who manages the model: approved (it became champion), rejected, or superseded by a newer
    passing version."""

    model: str
    version: int
    status: ApprovalStatus
    requested_by: str
    requested_at: datetime | None
    request_reason: str
    # 0: there was no champion when it was requested.
    champion_version: int
    # Empty while pending.
    decided_by: str
    decided_at: datetime | None
    reason: str
    # 0: not superseded.
    superseded_by: int

    @classmethod
    def of(cls, approval: registry_pb2.Approval) -> Approval:
        return cls(
            model=approval.model,
            version=approval.version,
            status=_APPROVAL_STATUSES.get(approval.status, "pending"),
            requested_by=approval.requested_by,
            requested_at=_time(approval.requested_at, approval.HasField("requested_at")),
            request_reason=approval.request_reason,
            champion_version=approval.champion_version,
            decided_by=approval.decided_by,
            decided_at=_time(approval.decided_at, approval.HasField("decided_at")),
            reason=approval.reason,
            superseded_by=approval.superseded_by,
        )


@dataclass(frozen=True)
class Lineage:
    """Which data a version was trained on: its dataset version, that version's parent and the
    batches it added."""

    version: ModelVersion
    dataset: str
    dataset_version: str
    parent_dataset_version: str
    batch_ids: tuple[str, ...]

    @classmethod
    def of(cls, lineage: registry_pb2.Lineage) -> Lineage:
        return cls(
            version=ModelVersion.of(lineage.version),
            dataset=lineage.dataset,
            dataset_version=lineage.dataset_version,
            parent_dataset_version=lineage.parent_dataset_version,
            batch_ids=tuple(lineage.batch_ids),
        )


@dataclass(frozen=True)
class StoredTrainingSpec:
    """One stored version of a model's training spec (the JSON of cascade.training_spec)."""

    model: str
    version: int
    spec_json: str
    actor: str
    created_at: datetime | None

    @classmethod
    def of(cls, spec: registry_pb2.TrainingSpec) -> StoredTrainingSpec:
        return cls(
            model=spec.model,
            version=spec.version,
            spec_json=spec.spec_json,
            actor=spec.actor,
            created_at=_time(spec.created_at, spec.HasField("created_at")),
        )


# Monitor

_P_VALUE_TESTS = frozenset({"ks", "chisquare", "z"})


@dataclass(frozen=True)
class FeatureDrift:
    """One column's test. `p_value` is NaN for the distance tests. The distributions (reports
    only, empty in a history's verdicts) are shares of the reference's and the window's rows on the
    test's bins: numeric bins [edge i, edge i+1) with one edge more than shares, or named categories."""

    feature: str
    test: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool
    bin_edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    reference_frequencies: tuple[float, ...] = ()
    window_frequencies: tuple[float, ...] = ()

    @property
    def drifts_below(self) -> bool:
        """Whether the test drifts when its p-value falls below the threshold (the monitor's
        Evidently-compatible ks, chisquare and z), not when its statistic rises above it."""
        return self.test in _P_VALUE_TESTS

    @property
    def score(self) -> float:
        """What was compared with the threshold: the p-value or the statistic (`drifts_below`)."""
        return self.p_value if self.drifts_below else self.statistic

    @classmethod
    def of(cls, drift: monitor_pb2.FeatureDrift) -> FeatureDrift:
        return cls(
            drift.feature,
            drift.test,
            drift.statistic,
            drift.p_value,
            drift.threshold,
            drift.drifted,
            bin_edges=tuple(drift.bin_edges),
            categories=tuple(drift.categories),
            reference_frequencies=tuple(drift.reference_frequencies),
            window_frequencies=tuple(drift.window_frequencies),
        )


@dataclass(frozen=True)
class Performance:
    metric: str
    value: float | None
    labelled_rows: int
    champion_value: float | None
    threshold: float
    decayed: bool
    estimated_accuracy: float | None
    estimate_note: str

    @classmethod
    def of(cls, performance: monitor_pb2.Performance) -> Performance:
        return cls(
            metric=performance.metric,
            value=_optional(performance, "value"),
            labelled_rows=performance.labelled_rows,
            champion_value=_optional(performance, "champion_value"),
            threshold=performance.threshold,
            decayed=performance.decayed,
            estimated_accuracy=_optional(performance, "estimated_accuracy"),
            estimate_note=performance.estimate_note,
        )


@dataclass(frozen=True)
class AttributionShift:
    """Drift explained: one feature's share of the champion's total |attribution| on a sample of its
    reference rows and on the window's latest rows."""

    feature: str
    reference_share: float
    window_share: float

    @property
    def moved(self) -> float:
        return self.window_share - self.reference_share


@dataclass(frozen=True)
class GlobalAttribution:
    """A version's `global_attribution` tag (the trainer's): mean |attribution| per feature on its
    hold-out, from cascade.explain on its ONNX artifact, with the method and the output space."""

    method: str
    output_space: str
    rows: int
    mean_abs: dict[str, float]

    @classmethod
    def of_tags(cls, tags: dict[str, str]) -> GlobalAttribution | None:
        """The version's global attribution; None without the tag, or with one that does not read."""
        try:
            document = json.loads(tags.get("global_attribution", "") or "null")
            if not isinstance(document, dict):
                return None
            return cls(
                method=str(document["method"]),
                output_space=str(document["output_space"]),
                rows=int(document["rows"]),
                mean_abs={str(k): float(v) for k, v in dict(document["mean_abs"]).items()},
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class DriftReport:
    model: str
    model_version: int
    reference_dataset_version: str
    reference_rows: int
    window_size: int
    predictions_seen: int
    features: tuple[FeatureDrift, ...]
    prediction: FeatureDrift | None
    dataset_drifted: bool
    performance: Performance | None
    computed_at: datetime | None
    # Drift explained (drifted windows only): the features whose attribution share moved most,
    # largest move first; and how that was measured, or why it was not.
    attribution_shift: tuple[AttributionShift, ...] = ()
    attribution_note: str = ""

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @classmethod
    def of(cls, report: monitor_pb2.DriftReport) -> DriftReport:
        return cls(
            model=report.model,
            model_version=report.model_version,
            reference_dataset_version=report.reference_dataset_version,
            reference_rows=report.reference_rows,
            window_size=report.window_size,
            predictions_seen=report.predictions_seen,
            features=tuple(FeatureDrift.of(f) for f in report.features),
            prediction=FeatureDrift.of(report.prediction) if report.HasField("prediction") else None,
            dataset_drifted=report.dataset_drifted,
            performance=Performance.of(report.performance) if report.HasField("performance") else None,
            computed_at=_time(report.computed_at, report.HasField("computed_at")),
            attribution_shift=tuple(
                AttributionShift(s.feature, s.reference_share, s.window_share)
                for s in report.attribution_shift
            ),
            attribution_note=report.attribution_note,
        )


# Serving: explanations


@dataclass(frozen=True)
class RowAttribution:
    """One row's explanation: `output` = `base_value` + sum(`attributions`), one per feature."""

    class_index: int  # the class explained; -1 for a regressor
    class_label: str  # "" when unknown
    base_value: float  # the expected output over the background rows
    output: float
    attributions: tuple[float, ...]

    @classmethod
    def of(cls, row: explain_pb2.RowAttribution) -> RowAttribution:
        return cls(
            class_index=row.class_index,
            class_label=row.class_label,
            base_value=row.base_value,
            output=row.output,
            attributions=tuple(row.attributions),
        )


@dataclass(frozen=True)
class Explained:
    """Serving's explanation of some rows by the version that answered: each feature's attribution
    to one output per row (Shapley values), in `output_space` (probability, margin or value)."""

    model: str
    version: int
    request_id: str
    features: tuple[str, ...]
    method: str  # linear, tree or kernel
    output_space: str
    rows: tuple[RowAttribution, ...]
    evaluations: int  # model rows evaluated
    seconds: float

    @classmethod
    def of(cls, response: explain_pb2.ExplainResponse) -> Explained:
        return cls(
            model=response.model_name,
            version=int(response.model_version or 0),
            request_id=response.id,
            features=tuple(response.features),
            method=response.method,
            output_space=response.output_space,
            rows=tuple(RowAttribution.of(row) for row in response.rows),
            evaluations=response.evaluations,
            seconds=response.seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, as `cascade explain --json` prints it."""
        return {
            "model": self.model,
            "version": self.version,
            "request_id": self.request_id,
            "features": list(self.features),
            "method": self.method,
            "output_space": self.output_space,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "rows": [
                {
                    "class_index": row.class_index,
                    "class_label": row.class_label,
                    "base_value": row.base_value,
                    "output": row.output,
                    "attributions": dict(zip(self.features, row.attributions, strict=True)),
                }
                for row in self.rows
            ],
        }


# Trainer


@dataclass(frozen=True)
class ImportResult:
    """A model imported from outside: its new version, and how closely its ONNX form matched it."""

    model_version: int
    parity_max_difference: float
    parity_rows: int
    # False: imported without a reference dataset, so nothing can tell when its data drifts.
    monitored: bool

    @classmethod
    def of(cls, response: trainer_pb2.ImportModelResponse) -> ImportResult:
        return cls(
            model_version=response.model_version,
            parity_max_difference=response.parity_max_difference,
            parity_rows=response.parity_rows,
            monitored=response.monitored,
        )
