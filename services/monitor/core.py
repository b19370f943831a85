"""The monitor's domain, free of transports: per model, a window of the latest prediction inputs
and outputs answered by its champion, the reference data that champion was trained on (prepared
once: sorted and counted), and a drift report every `evaluate_every` new rows, with a test per
feature and for the prediction. The prediction's reference is the champion's own outputs on its
reference rows (a regressor's predictions are narrower than its labels, so labels would flag the
model's own training rows forever). Ground-truth labels, joined on the request id, give the
champion's real performance per window (decay); without labels, predicted probabilities give a
CBPE-like *estimate*.

One window per served version: a new champion starts a fresh window, and rows answered by any other
version (requests pinned to an older one, or served during a swap) are not counted against it.

Two modes decide whether a window drifts (`DriftPolicy.drift_mode`): "calibrated" (the default)
calibrates every feature's threshold on the champion's reference for the window's size, once per
champion (`drift.calibrate`, in a thread), so that a report on unshifted traffic drifts at most
`false_alarm_rate` of the time; "evidently" keeps Evidently's default tests and its rule of half the
features, with the tests and thresholds the policy names.

Closing the loop: when `trigger_after` consecutive reports find dataset drift (hysteresis), or the
labelled metric falls more than `decay_threshold` below the champion's validation metric, the core
emits *drift detected*; then nothing more for `cooldown_seconds`, and the count starts again. The
event says what a retrain could learn from (`action`): labelled production rows, sent to ingest as
a feedback batch whose new dataset version retrains through the normal path ("feedback"); a dataset
version newer than the champion's ("retrain"); or nothing, in which case no retrain happens and the
event says so ("no_new_data"). Every decision is recorded with what it triggered, in words; one held
back (within the cooldown, or a model outside `retrain_models`) too, marked not emitted, at most
once per cooldown period and kind so that a long drift does not fill the history.

A report carries, per feature and for the prediction, the reference's and the window's
distributions on the test's own bins (`drift.distribution`), for people to look at; the history
keeps each verdict's per-feature statistics and thresholds, without the distributions.

Predictions may arrive before any reference (they travel on another topic): they just fill the
window, and the first evaluation happens as soon as the reference is in. Delivery is at-least-once,
so a redelivered batch is appended twice; a window of recent traffic tolerates that.

What decides lives in the store, not in a replica's memory: the window's rows, the rows pending
evaluation, the drift streak, the cooldown, predictions awaiting labels and the labelled rows. So
replicas on one database (each consuming some partitions) and a restarted monitor see one window and
one streak, an evaluation is claimed by the append that made it due, a drift event by the one
replica that claims the cooldown, and labels join predictions another replica logged. A replica
keeps only what it can rebuild (the reference prepared, calibrated and explained, loaded again when
another replica installed a new champion) and the answers of a version not promoted yet.

Appends and label joins of a model that arrive while its previous transaction is in flight share the
next one (batching.GroupCommit): each call returns once its rows are committed, a failed transaction
fails every call in it, and a group claims one evaluation at most (on the window after it). Label
joins do not wait for a drift evaluation; evaluations of a model run one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from prometheus_client import Counter, Gauge

from cascade.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, classify
from cascade.events import DriftDetected
from cascade.services.monitor.attribution import (
    AttributionBaseline,
    AttributionLimits,
    AttributionShift,
    attribution_baseline,
    attribution_shift,
    describe_movers,
)
from cascade.services.monitor.batching import GroupCommit
from cascade.services.monitor.drift import (
    CATEGORICAL,
    DEFAULT_THRESHOLDS,
    NUMERIC,
    P_VALUE_TESTS,
    TESTS,
    Calibration,
    ColumnReference,
    FeatureDrift,
    PreparedReference,
    calibrate,
    column_drift,
    dataset_drifted,
    distribution,
    evaluate,
)
from cascade.services.monitor.store import (
    DriftEventRecord,
    DriftReport,
    LabelBatch,
    LabelJoin,
    MonitorStore,
    Performance,
    PredictionBatch,
    ReferenceInfo,
    Verdict,
    WindowAppend,
)

__all__ = [
    "ChampionArtifacts",
    "ChampionOutputs",
    "DriftPolicy",
    "LoggedPredictions",
    "MonitorCore",
    "Reference",
    "ReferenceSource",
    "RetrainData",
    "Window",
]

SOURCE = "cascade/monitor"
PREDICTION = "prediction"  # the name of the output column in reports

log = logging.getLogger(__name__)

PREDICTIONS = Counter("cascade_monitor_predictions_total", "Prediction rows received, by model.", ["model"])
FEATURE_DRIFT = Gauge(
    "cascade_monitor_feature_drift_statistic",
    "Statistic of the latest window's drift test against the reference, by feature (and prediction).",
    ["model", "feature"],
)
DATASET_DRIFTED = Gauge(
    "cascade_monitor_dataset_drifted", "1 when the latest report found dataset drift, else 0.", ["model"]
)
WINDOW_METRIC = Gauge(
    "cascade_monitor_window_metric",
    "The champion's primary metric on the latest window of labelled predictions.",
    ["model", "metric"],
)
DRIFT_EVENTS = Counter(
    "cascade_monitor_drift_detected_total", "Drift detected events emitted.", ["model", "kind"]
)

Matrix = NDArray[np.float64]
Emit = Callable[[DriftDetected], Awaitable[None]]
Action = Literal["retrain", "feedback", "no_new_data"]
DRIFT_MODES = ("calibrated", "evidently")
NO_NEW_DATA = "drift detected; no new data to learn from"
_HOLD_BACK_SPACING = 60.0  # seconds: held-back decisions are recorded at least this far apart
# How often a replica asks the store whether another replica installed a new champion, at most,
# besides whenever rows of a version it does not know arrive or an append finds another champion.
_REFERENCE_RECHECK_SECONDS = 1.0
IGNORED_ROWS = Counter(
    "cascade_monitor_other_version_rows_total",
    "Prediction rows answered by a version other than the champion, not counted against it.",
    ["model"],
)
FEEDBACK_ROWS = Counter(
    "cascade_monitor_feedback_rows_total",
    "Labelled production rows sent to ingest as feedback batches.",
    ["model"],
)


def _groups_of_rows(
    prepared: Sequence[tuple[int, PredictionBatch]], rows: int
) -> list[list[tuple[int, PredictionBatch]]]:
    """Consecutive groups, each closed once it holds at least `rows` rows."""
    groups: list[list[tuple[int, PredictionBatch]]] = []
    current: list[tuple[int, PredictionBatch]] = []
    held = 0
    for item in prepared:
        current.append(item)
        held += len(item[1].rows)
        if held >= rows:
            groups.append(current)
            current, held = [], 0
    if current:
        groups.append(current)
    return groups


@dataclass(frozen=True)
class LoggedPredictions:
    """One logged request's rows, as `MonitorCore.record_predictions` takes them."""

    model: str
    features: Sequence[str]
    inputs: Sequence[Sequence[float]]
    outputs: Sequence[float] = ()
    request_id: str = ""
    probabilities: Sequence[Sequence[float]] | None = None
    model_version: int | None = None


@dataclass(frozen=True)
class Reference:
    info: ReferenceInfo
    rows: Matrix  # reference rows x features, in `info.features` order
    target: Matrix | None = None  # the training labels (not the prediction's reference: see `predictions`)
    task: str = ""  # "classification" or "regression", as the registry's tags say
    champion_metrics: Mapping[str, float] = field(default_factory=dict)  # the run's, e.g. holdout_accuracy
    predictions: Matrix | None = (
        None  # the champion's own output on each of `rows`, the prediction's reference
    )
    background: Matrix | None = None  # the version's explain_background rows, in `info.features` order

    @property
    def primary_metric(self) -> str:
        return "r2" if self.task == "regression" else "accuracy"

    @property
    def validation_metric(self) -> float | None:
        """The champion's primary metric on its held-out rows at training time."""
        value = self.champion_metrics.get(f"holdout_{self.primary_metric}")
        return None if value is None else float(value)


@dataclass(frozen=True)
class DriftPolicy:
    """How reports are computed and when they close the loop (see MonitorSettings for each field)."""

    feature_tests: Mapping[str, str] = field(default_factory=dict)
    categorical_features: frozenset[str] = frozenset()
    thresholds: Mapping[str, float] = field(default_factory=dict)
    dataset_drift_share: float = 0.5
    window_seconds: float = 0.0
    trigger_after: int = 2
    cooldown_seconds: float = 600.0
    retrain_models: str = "*"
    decay_threshold: float = 0.1
    labels_window: int = 200
    min_labels: int = 30
    remembered_requests: int = 10000
    feedback_min_rows: int = 50
    feedback_max_rows: int = 10000
    drift_mode: str = "calibrated"
    false_alarm_rate: float = 0.01
    calibration_draws: int = 200
    attribution: AttributionLimits = field(default_factory=AttributionLimits)

    def __post_init__(self) -> None:
        if self.drift_mode not in DRIFT_MODES:
            raise ValueError(f"unknown drift mode {self.drift_mode!r}; known: {', '.join(DRIFT_MODES)}")
        for feature, test in self.feature_tests.items():
            if test not in TESTS:
                raise ValueError(
                    f"feature {feature!r}: unknown drift test {test!r}; known: {', '.join(TESTS)}"
                )
        for test in self.thresholds:
            if test not in DEFAULT_THRESHOLDS:
                raise ValueError(f"a threshold for unknown drift test {test!r}")

    def retrains(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.retrain_models)


class Unmonitored(FailedPrecondition):
    """The version has no reference data: a model imported without a reference dataset. Nothing
    to compare its traffic with, so no drift reports; not an error to retry or dead-letter."""


class ReferenceSource(Protocol):
    """Where the reference data of a promoted model version comes from."""

    async def fetch(self, model: str, model_version: int) -> Reference: ...


class ChampionOutputs(Protocol):
    """Runs a model version on rows, as serving would: one output per row (the predicted label of a
    classifier, the value of a regressor)."""

    async def outputs(self, model: str, model_version: int, rows: Matrix) -> Matrix: ...


class ChampionArtifacts(Protocol):
    """A model version's ONNX artifact, the one serving runs (to explain its predictions)."""

    async def artifact(self, model: str, model_version: int) -> bytes: ...


class RetrainData(Protocol):
    """What a retrain could learn from that the champion has not: ingest's view of the dataset."""

    async def newer_version(self, dataset: str, dataset_version: str) -> str | None:
        """The dataset's latest version when it is not `dataset_version`, else None."""
        ...

    async def send_feedback(
        self, dataset: str, features: Sequence[str], rows: Matrix, labels: Matrix, source: str
    ) -> str:
        """Upload labelled production rows as one batch through ingest's normal validation; the
        dataset version it made."""
        ...


class Window:
    """Ring buffer of the most recent `size` rows, with each row's prediction and arrival time; a
    batch is written in one vectorised assignment. Count windows are its size; time windows select
    the rows younger than a cutoff when read."""

    def __init__(self, size: int, width: int) -> None:
        self._rows = np.empty((size, width), dtype=np.float64)
        self._outputs = np.full(size, np.nan)
        self._times = np.zeros(size)
        self._next = 0
        self._filled = 0

    @property
    def size(self) -> int:
        return len(self._rows)

    @property
    def width(self) -> int:
        return int(self._rows.shape[1])

    def __len__(self) -> int:
        return self._filled

    def append(self, batch: Matrix, outputs: Matrix | None = None, at: float | None = None) -> None:
        kept = batch[-self.size :]  # older rows of a huge batch would be overwritten anyway
        positions = (self._next + np.arange(len(kept))) % self.size
        self._rows[positions] = kept
        self._outputs[positions] = np.nan if outputs is None else outputs[-self.size :]
        self._times[positions] = time.time() if at is None else at
        self._next = (self._next + len(kept)) % self.size
        self._filled = min(self._filled + len(kept), self.size)

    def _order(self) -> NDArray[np.int64]:
        if self._filled < self.size:
            return np.arange(self._filled)
        return (self._next + np.arange(self.size)) % self.size

    def rows(self, since: float | None = None) -> Matrix:
        """A copy of the rows held, oldest first; only those that arrived at `since` or later if given."""
        order = self._order()
        if since is not None:
            order = order[self._times[order] >= since]
        return self._rows[order]

    def outputs(self, since: float | None = None) -> Matrix:
        order = self._order()
        if since is not None:
            order = order[self._times[order] >= since]
        return self._outputs[order]


@dataclass
class _ModelState:
    """A replica's own view of a model: caches it can rebuild (the reference prepared, calibrated and
    explained) and the answers of a version not promoted yet. What decides (the window, the streak,
    the cooldown, labels) lives in the store, shared by the replicas (MonitorStore.model_state)."""

    early: Window | None = None  # answers of a version newer than the champion, not promoted here yet
    early_version: int | None = None
    reference: Reference | None = None
    prepared: PreparedReference | None = None  # the reference, sorted and counted once
    calibration: Calibration | None = None  # its thresholds for the window size (calibrated mode)
    prediction_reference: ColumnReference | None = None
    attribution: AttributionBaseline | None = None  # the champion's explainer, built at its first drift
    attribution_unavailable: str = ""  # why the champion cannot be explained (not tried again)


class MonitorCore:
    def __init__(
        self,
        store: MonitorStore,
        source: ReferenceSource,
        window_size: int,
        evaluate_every: int,
        p_value_threshold: float,
        policy: DriftPolicy | None = None,
        emit: Emit | None = None,
        champion_outputs: ChampionOutputs | None = None,
        retrain_data: RetrainData | None = None,
        artifacts: ChampionArtifacts | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.champion_outputs = champion_outputs  # without it, no prediction drift
        self.artifacts = artifacts  # without it, drift is not explained
        self.retrain_data = retrain_data  # without it, every drift event asks for a retrain
        self.window_size = window_size
        self.evaluate_every = evaluate_every
        self.p_value_threshold = p_value_threshold
        self.policy = policy or DriftPolicy()
        self.emit = emit
        # p_value_threshold is the threshold of the p-value tests unless the policy names one
        self.thresholds = {
            **{test: p_value_threshold for test in P_VALUE_TESTS},
            **self.policy.thresholds,
        }
        self._models: dict[str, _ModelState] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # the reference: restored, installed, routed by
        self._evaluations: dict[str, asyncio.Lock] = {}  # a model's drift reports, one at a time
        self._reference_checked: dict[str, float] = {}  # when the store's champion was last read
        # Appends and label joins arriving together share one store transaction (GroupCommit).
        self._appends: dict[str, GroupCommit[PredictionBatch, WindowAppend]] = {}
        self._joins: dict[str, GroupCommit[LabelBatch, LabelJoin]] = {}

    async def set_reference(self, model: str, model_version: int) -> DriftReport | None:
        """Make `model_version`'s training data the model's reference. Idempotent: the current
        reference is kept as is; any other version (a rollback too) is fetched and replaces it."""
        async with self._lock(model):
            state = self._state(model)
            if state.reference is not None and state.reference.info.model_version == model_version:
                log.info("%s v%d is already the reference; nothing changes", model, model_version)
                return None
            try:
                reference = await self._fetch(model, model_version)
            except Unmonitored as exc:
                log.warning("%s v%d is the champion but not monitored: %s", model, model_version, exc)
                return None
            self.store.install_reference(reference.info)
            self._install(model, state, reference)
            await self._calibrate(model, state)
            return await self._adopt_early(model, state)

    async def record_predictions(
        self,
        model: str,
        features: Sequence[str],
        inputs: Sequence[Sequence[float]],
        outputs: Sequence[float] = (),
        request_id: str = "",
        probabilities: Sequence[Sequence[float]] | None = None,
        model_version: int | None = None,
    ) -> DriftReport | None:
        """Append a batch of prediction inputs (and their predictions, one per row, when given) to
        the model's window; remember them under `request_id` for labels to come. Returns the report
        if one was due. Rows answered by a `model_version` other than the champion's are not
        counted; before any reference, the window holds one version's rows, the latest one's."""
        logged = LoggedPredictions(model, features, inputs, outputs, request_id, probabilities, model_version)
        (outcome,) = await self.record_predictions_many([logged])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def record_predictions_many(
        self, logged: Sequence[LoggedPredictions]
    ) -> list[DriftReport | Exception | None]:
        """`record_predictions` for many requests at once (a batch of events): each model's rows are
        appended in one store transaction, in order, and this returns once they are committed. One
        outcome per request: the report it made due, or the permanent error that request alone
        failed with (a malformed one does not fail the others). Any other error (the transaction
        failed, the registry is down) is raised, and none of the rows may be taken as recorded."""
        outcomes: list[DriftReport | Exception | None] = [None] * len(logged)
        by_model: dict[str, list[int]] = {}
        for index, each in enumerate(logged):
            by_model.setdefault(each.model, []).append(index)
        for model, indexes in by_model.items():  # one writer at a time on the store anyway
            prepared: list[tuple[int, PredictionBatch]] = []
            async with self._lock(model):
                state = self._state(model)
                for index in indexes:
                    try:
                        batch = await self._prepare(model, state, logged[index])
                    except Exception as exc:
                        if classify(exc) != "permanent":
                            raise
                        outcomes[index] = exc
                        continue
                    if batch is not None:
                        prepared.append((index, batch))
            # Outside the lock, so that batches arriving meanwhile share the transaction; returns
            # once the rows are committed. A transaction claims one drift report at most, so a
            # group closes once it holds `evaluate_every` rows: reports keep their cadence.
            for group in _groups_of_rows(prepared, self.evaluate_every):
                appended = await self._appender(model).submit_many([batch for _, batch in group])
                for (index, batch), append in zip(group, appended, strict=True):
                    outcomes[index] = await self._appended(model, state, len(batch.rows), append)
        return outcomes

    async def _prepare(
        self, model: str, state: _ModelState, logged: LoggedPredictions
    ) -> PredictionBatch | None:
        """Under the model's lock: the rows to append, or None when they are not the champion's
        (held for an early champion, or ignored)."""
        if not logged.inputs:
            return None
        rows = _prediction_rows(model, logged.features, logged.inputs)
        predicted = _per_row(logged.outputs, len(rows))
        confidence = _confidences(logged.probabilities, len(rows))
        model_version = logged.model_version
        await self._restore_reference(model, state, model_version)
        champion = state.reference.info.model_version if state.reference is not None else None
        if model_version is not None and champion is not None and model_version > champion:
            # Serving may answer with a new champion before its promotion reaches the monitor
            # (another topic): its rows wait in a window of their own, adopted if it is promoted.
            if state.early is None or state.early_version != model_version:
                state.early, state.early_version = Window(self.window_size, rows.shape[1]), model_version
            if state.early.width == rows.shape[1]:
                state.early.append(rows, predicted)
            return None
        if model_version is not None and champion is not None and model_version != champion:
            IGNORED_ROWS.labels(model).inc(len(rows))
            log.debug(
                "%s: %d rows answered by v%d, not the champion v%d",
                model,
                len(rows),
                model_version,
                champion,
            )
            return None
        _check_width(model, state, rows.shape[1], self.store)
        return PredictionBatch(
            rows,
            predicted,
            confidence,
            model_version,
            evaluates=state.reference is not None,
            remember=(logged.request_id, self.policy.remembered_requests) if logged.request_id else None,
        )

    async def _appended(
        self, model: str, state: _ModelState, rows: int, appended: WindowAppend
    ) -> DriftReport | None:
        """After a commit: count the rows, and run the drift evaluation the append made due."""
        self._compare_champion(model, state, appended.champion)
        if not appended.counted:  # another replica installed another champion meanwhile
            IGNORED_ROWS.labels(model).inc(rows)
            return None
        PREDICTIONS.labels(model).inc(rows)
        if appended.due is None:
            return None
        async with self._evaluation_lock(model):  # not the lock: appends and labels go on meanwhile
            return await self._evaluate(model, state, appended)

    async def record_labels(self, model: str, request_id: str, labels: Sequence[float]) -> Performance | None:
        """Join ground truth with the predictions logged under `request_id`; returns the decay
        measurement if one was due. Labels of a request not (or no longer) remembered are dropped.
        Joins do not wait for a drift evaluation; those arriving together share one transaction."""
        truth = np.asarray(labels, dtype=np.float64)
        if truth.ndim != 1 or not np.isfinite(truth).all():
            raise InvalidArgument(f"{model}: labels for request {request_id} must be finite numbers")
        async with self._lock(model):
            state = self._state(model)
            await self._restore_reference(model, state)
        joined = await self._joiner(model).submit(LabelBatch(request_id, truth))
        if not joined.joined and not joined.rows:
            log.info("%s: labels for unknown request %s dropped", model, request_id)
            return None
        if not joined.joined:
            raise InvalidArgument(
                f"{model}: {len(labels)} labels for request {request_id} of {joined.rows} rows"
            )
        reference = state.reference
        if not joined.due or reference is None:
            return None
        performance = self._performance(model, reference, self.store.window_confidences(model))
        if performance.value is not None:
            WINDOW_METRIC.labels(model, performance.metric).set(performance.value)
        latest = self.store.latest_report(model)
        if latest is not None:  # the latest report carries the latest decay measurement
            self.store.update_performance(model, performance)
        if performance.decayed:
            await self._maybe_emit(model, state, "decay", performance.summary, [], asdict(performance))
        return performance

    def known_task(self, model: str) -> str:
        """The model's task ("classification", "regression") as its loaded reference's tags say;
        "" when no reference is loaded (nothing is fetched for it)."""
        state = self._models.get(model)
        return state.reference.task if state is not None and state.reference is not None else ""

    def history(self, model: str, limit: int = 100) -> tuple[list[Verdict], list[DriftEventRecord]]:
        if not model:
            raise InvalidArgument("a model name is required")
        return self.store.verdicts(model, limit), self.store.drift_events(model, limit)

    def latest_report(self, model: str) -> DriftReport:
        if not model:
            raise InvalidArgument("a model name is required")
        report = self.store.latest_report(model)
        if report is None:
            raise NotFound(
                f"no drift report for model {model!r} yet: one needs a promoted champion and at least "
                f"{self.evaluate_every} logged predictions"
            )
        return report

    # -- internals -----------------------------------------------------------------------------
    def _drift(
        self,
        prepared: PreparedReference,
        prediction_reference: ColumnReference | None,
        current: Matrix,
        outputs: Matrix,
    ) -> tuple[list[FeatureDrift], FeatureDrift | None]:
        """Every feature's test, and the prediction's against the training labels (when known)."""
        features = [self._column(column, current[:, index]) for index, column in enumerate(prepared.columns)]
        known = outputs[np.isfinite(outputs)]
        prediction = (
            self._column(prediction_reference, known) if prediction_reference and len(known) else None
        )
        return features, prediction

    def _column(self, reference: ColumnReference, values: Matrix) -> FeatureDrift:
        test = self.policy.feature_tests.get(reference.name)
        result = column_drift(reference, values, test, self.thresholds.get(test) if test else None)
        if test is None and result.test in self.thresholds:  # the default test, with a configured threshold
            threshold = self.thresholds[result.test]
            if threshold != result.threshold:
                result = column_drift(reference, values, result.test, threshold)
        return result

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    def _evaluation_lock(self, model: str) -> asyncio.Lock:
        return self._evaluations.setdefault(model, asyncio.Lock())

    def _appender(self, model: str) -> GroupCommit[PredictionBatch, WindowAppend]:
        appender = self._appends.get(model)
        if appender is None:

            async def flush(batches: Sequence[PredictionBatch]) -> list[WindowAppend]:
                return await asyncio.to_thread(  # off the loop: it may wait for another replica's lock
                    self.store.append_windows,
                    model,
                    batches,
                    window_size=self.window_size,
                    evaluate_every=self.evaluate_every,
                    at=time.time(),
                    since=self._since(),
                )

            appender = self._appends[model] = GroupCommit(flush)
        return appender

    def _joiner(self, model: str) -> GroupCommit[LabelBatch, LabelJoin]:
        joiner = self._joins.get(model)
        if joiner is None:

            async def flush(labels: Sequence[LabelBatch]) -> list[LabelJoin]:
                return await asyncio.to_thread(
                    self.store.join_labels_many,
                    model,
                    labels,
                    min_labels=self.policy.min_labels,
                    keep=max(self.policy.labels_window, self.policy.feedback_max_rows),
                    counts=self._state(model).reference is not None,
                )

            joiner = self._joins[model] = GroupCommit(flush)
        return joiner

    def _compare_champion(self, model: str, state: _ModelState, stored: int | None) -> None:
        """After an append: when the store's champion is not this replica's, read it at the next event."""
        local = state.reference.info.model_version if state.reference is not None else None
        if stored != local:
            self._reference_checked.pop(model, None)

    def _performance(self, model: str, reference: Reference, confidences: Matrix) -> Performance:
        labelled = self.store.labelled(model, self.policy.labels_window)
        metric = reference.primary_metric
        value = _metric(metric, labelled[:, 0], labelled[:, 1]) if len(labelled) else None
        champion = reference.validation_metric
        decayed = (
            value is not None and champion is not None and champion - value > self.policy.decay_threshold
        )
        estimate, note = None, "unavailable: serving logs no predicted probabilities"
        if reference.task == "regression":
            note = "unavailable: a confidence-based estimate needs a classifier"
        elif len(confidences) and np.isfinite(confidences).any():
            estimate = float(np.nanmean(confidences))
            note = "estimate (CBPE-like): mean top-class probability, assuming calibrated probabilities"
        return Performance(
            metric=metric,
            value=value,
            labelled_rows=len(labelled),
            champion_value=champion,
            threshold=self.policy.decay_threshold,
            decayed=bool(decayed),
            estimated_accuracy=estimate,
            estimate_note=note,
        )

    async def _maybe_emit(
        self,
        model: str,
        state: _ModelState,
        kind: str,
        summary: str,
        drifted_features: list[str],
        report: dict[str, object],
    ) -> None:
        """Emit *drift detected* unless the model is not retrained automatically or is cooling down;
        record the decision either way, with what it triggered."""
        if self.emit is None or state.reference is None:
            return
        now = time.time()
        if not self.policy.retrains(model):
            self._hold_back(
                model,
                state,
                kind,
                summary,
                now,
                f"none: {model} is not retrained automatically (retrain_models is "
                f"{self.policy.retrain_models!r}); not emitted",
            )
            return
        claimed, last_emitted = self.store.claim_emission(model, now, self.policy.cooldown_seconds)
        if not claimed:  # this replica or another emitted within the cooldown
            log.info(
                "%s: %s again, but within the %gs cooldown; not emitted",
                model,
                kind,
                self.policy.cooldown_seconds,
            )
            last = datetime.fromtimestamp(last_emitted or now, UTC)
            self._hold_back(
                model,
                state,
                kind,
                summary,
                now,
                f"none: within the {self.policy.cooldown_seconds:g}s cooldown after the event of "
                f"{last:%Y-%m-%d %H:%M:%S} UTC; not emitted",
            )
            return
        event_id = str(uuid.uuid4())
        try:
            action, note = await self._retrain_action(model, state, event_id)
            event = DriftDetected(
                id=event_id,
                source=SOURCE,
                subject=model,
                model=model,
                model_version=state.reference.info.model_version,
                kind="decay" if kind == "decay" else "drift",
                summary=f"{summary}; {note}" if note else summary,
                drifted_features=drifted_features,
                report=report,
                dataset_version=state.reference.info.dataset_version,
                action=action,
            )
            await self.emit(event)
        except BaseException:  # not emitted: the next decision may emit
            self.store.release_emission(model, now, last_emitted)
            raise
        self.store.save_drift_event(
            model,
            event.id,
            event.kind,
            event.model_version,
            event.summary,
            event.time,
            triggered=_triggered(action, note),
            emitted=True,
        )
        DRIFT_EVENTS.labels(model, event.kind).inc()
        log.warning(
            "%s v%d: %s detected (%s); drift event %s emitted, action %s",
            model,
            event.model_version,
            kind,
            event.summary,
            event.id,
            action,
        )

    def _hold_back(
        self, model: str, state: _ModelState, kind: str, summary: str, now: float, why: str
    ) -> None:
        """Record a decision that emitted nothing, unless one of its kind was recorded recently (by
        any replica)."""
        kind = "decay" if kind == "decay" else "drift"
        spacing = max(self.policy.cooldown_seconds, _HOLD_BACK_SPACING)
        if state.reference is not None:
            version = state.reference.info.model_version
            self.store.save_held_back(model, kind, version, summary, now, spacing, why)

    async def _retrain_action(self, model: str, state: _ModelState, event_id: str) -> tuple[Action, str]:
        """What a retrain could learn from, preferring labelled production rows (sent to ingest now,
        so their dataset version retrains through the normal path), then a newer dataset version."""
        reference = state.reference
        if self.retrain_data is None or reference is None:
            return "retrain", ""
        info = reference.info
        trained_on = f"{info.dataset}@{info.dataset_version[:12]}"
        inputs, labels, through = self.store.feedback(model, self.policy.feedback_max_rows)
        if len(labels) >= self.policy.feedback_min_rows:
            source = (
                f"feedback: {len(labels)} labelled predictions of {model} v{info.model_version}, "
                f"drift event {event_id}"
            )
            try:
                version = await self.retrain_data.send_feedback(
                    info.dataset, info.features, inputs, labels, source
                )
            except Exception as exc:  # the rows stay here; a newer version may still help
                log.warning("%s: the feedback batch could not be sent to ingest: %s", model, exc)
            else:
                self.store.feedback_sent(model, through)
                FEEDBACK_ROWS.labels(model).inc(len(labels))
                return "feedback", (
                    f"{len(labels)} labelled production rows sent to ingest as a feedback batch "
                    f"({info.dataset}@{version[:12]}), whose new version retrains"
                )
        try:
            newer = await self.retrain_data.newer_version(info.dataset, info.dataset_version)
        except Exception as exc:  # the trainer checks again before it trains
            log.warning("%s: cannot ask ingest for a version newer than %s: %s", model, trained_on, exc)
            return "retrain", f"whether {info.dataset} has newer data is the trainer's to check"
        if newer is not None:
            return "retrain", f"retraining on {info.dataset}@{newer[:12]}, newer than {trained_on}"
        return "no_new_data", (
            f"{NO_NEW_DATA} (the champion was trained on {trained_on}, the latest version, "
            "and no labelled production rows arrived)"
        )

    async def _explain_drift(
        self, model: str, state: _ModelState, current: Matrix
    ) -> tuple[tuple[AttributionShift, ...], str]:
        """The features whose share of the champion's attributions moved most, and how that was
        measured; or none, and why. The champion's explainer and its reference shares are built at
        its first drifted window and kept; a model that cannot be explained is not tried again, an
        unreachable registry is at the next drifted window."""
        reference = state.reference
        if reference is None or self.artifacts is None:
            return (), "not explained: this monitor runs without the registry's artifacts"
        if state.attribution_unavailable:
            return (), state.attribution_unavailable
        limits = self.policy.attribution
        version = reference.info.model_version
        try:
            if state.attribution is None:
                artifact = await self.artifacts.artifact(model, version)
                state.attribution = await asyncio.to_thread(
                    attribution_baseline,
                    artifact,
                    reference.info.features,
                    reference.rows,
                    reference.background,
                    limits,
                )
            return await asyncio.to_thread(attribution_shift, state.attribution, current, limits)
        except Exception as exc:  # an explanation is an aid: the report and the loop go on without it
            reason = f"not explained: {type(exc).__name__}: {exc}"[:300]
            log.warning("%s v%d: drift %s", model, version, reason)
            if (
                state.attribution is None and classify(exc) != "transient"
            ):  # a deadline or an outage: next time
                state.attribution_unavailable = reason
            return (), reason

    def _state(self, model: str) -> _ModelState:
        return self._models.setdefault(model, _ModelState())

    async def _restore_reference(
        self, model: str, state: _ModelState, answered_by: int | None = None
    ) -> None:
        """Load the stored reference when this replica has another or none: after a restart (the
        promotion event is long consumed) or after another replica installed a new champion. The
        store is read at most once a second, unless rows `answered_by` a version newer than this
        replica's champion arrive (a promotion elsewhere) or an append found another champion."""
        local = state.reference.info.model_version if state.reference is not None else None
        now = time.monotonic()
        checked = self._reference_checked.get(model)
        newer = answered_by is not None and local is not None and answered_by > local
        if checked is not None and now - checked < _REFERENCE_RECHECK_SECONDS and not newer:
            return
        self._reference_checked[model] = now
        info = self.store.reference(model)
        if info is None or (
            state.reference is not None and state.reference.info.model_version == info.model_version
        ):
            return
        log.info("loading the reference of %s from v%d", model, info.model_version)
        self._install(model, state, await self._fetch(model, info.model_version))
        await self._calibrate(model, state)
        early = self._take_early(state)
        if early is not None:  # this replica's answers of the new champion, before the change
            self._append(
                model, state, early.rows(), early.outputs(), None, info.model_version, evaluates=False
            )

    def _take_early(self, state: _ModelState) -> Window | None:
        """The answers held for the champion before its promotion, if they fit its reference."""
        early, version = state.early, state.early_version
        state.early = state.early_version = None
        if (
            early is None
            or state.reference is None
            or version != state.reference.info.model_version
            or early.width != len(state.reference.info.features)
            or not len(early)
        ):
            return None
        return early

    async def _adopt_early(self, model: str, state: _ModelState) -> DriftReport | None:
        """After a promotion: the champion's answers that came before it count in its window, and an
        evaluation due (rows before any reference included) happens now."""
        early = self._take_early(state)
        if early is None:
            appended = self.store.claim_evaluation(model, self.evaluate_every, self._since())
        else:
            assert state.reference is not None
            version = state.reference.info.model_version
            appended = self._append(
                model, state, early.rows(), early.outputs(), None, version, evaluates=True
            )
        return await self._evaluate(model, state, appended)

    def _append(
        self,
        model: str,
        state: _ModelState,
        rows: Matrix,
        outputs: Matrix | None,
        confidences: Matrix | None,
        model_version: int | None,
        *,
        evaluates: bool,
    ) -> WindowAppend:
        appended = self.store.append_window(
            model,
            model_version,
            rows,
            outputs,
            confidences,
            window_size=self.window_size,
            evaluate_every=self.evaluate_every,
            at=time.time(),
            evaluates=evaluates,
            since=self._since(),
        )
        PREDICTIONS.labels(model).inc(len(rows))
        return appended

    def _since(self) -> float | None:
        return time.time() - self.policy.window_seconds if self.policy.window_seconds > 0 else None

    async def _calibrate(self, model: str, state: _ModelState) -> None:
        """Thresholds for this reference and window size, once per champion (seconds of CPU, in a
        thread). A reference too small to calibrate on is judged in the evidently mode."""
        state.calibration = None
        if self.policy.drift_mode != "calibrated" or state.prepared is None:
            return
        try:
            state.calibration = await asyncio.to_thread(
                calibrate,
                state.prepared,
                self.window_size,
                false_alarm_rate=self.policy.false_alarm_rate,
                draws=self.policy.calibration_draws,
            )
        except ValueError as exc:
            log.warning("%s: cannot calibrate on its reference (%s); Evidently's rule decides", model, exc)
            return
        log.info(
            "%s: calibrated for windows of %d rows: false alarms at most %.2f%% of reports "
            "(%.2f%% of %d draws)",
            model,
            self.window_size,
            100 * state.calibration.false_alarm_rate,
            100 * state.calibration.draw_false_alarm_rate,
            state.calibration.draws,
        )

    async def _fetch(self, model: str, model_version: int) -> Reference:
        """The reference, with the champion's own outputs on its rows when they can be computed."""
        reference = await self.source.fetch(model, model_version)
        if self.champion_outputs is None or reference.predictions is not None:
            return reference
        try:
            outputs = await self.champion_outputs.outputs(model, model_version, reference.rows)
        except Unavailable:
            raise  # the promotion is redelivered and tried again
        except Exception as exc:  # a model we cannot run here: features are still compared
            log.warning(
                "%s v%d: no prediction reference, its outputs could not be computed: %s",
                model,
                model_version,
                exc,
            )
            return reference
        return dataclasses.replace(reference, predictions=outputs)

    def _install(self, model: str, state: _ModelState, reference: Reference) -> None:
        previous = state.reference
        state.reference = reference
        kinds = {name: CATEGORICAL for name in self.policy.categorical_features}
        state.prepared = PreparedReference.of(reference.rows, reference.info.features, kinds)
        state.prediction_reference = (
            ColumnReference.of(
                PREDICTION, reference.predictions, CATEGORICAL if reference.task != "regression" else NUMERIC
            )
            if reference.predictions is not None and len(reference.predictions)
            else None
        )
        state.attribution, state.attribution_unavailable = None, ""  # explained with its own artifact
        if previous is not None:
            _forget_feature_gauges(model, set(previous.info.features) - set(reference.info.features))
        log.info(
            "%s v%d: reference is %s@%s (%d rows)",
            model,
            reference.info.model_version,
            reference.info.dataset,
            reference.info.dataset_version,
            reference.info.rows,
        )

    async def _evaluate(self, model: str, state: _ModelState, appended: WindowAppend) -> DriftReport | None:
        """The report on the window an append claimed for evaluation, if it did."""
        reference, prepared, window = state.reference, state.prepared, appended.due
        calibration = state.calibration  # all of one champion's, though another may be installed meanwhile
        if reference is None or prepared is None or window is None or not len(window.rows):
            return None
        current, outputs = window.rows, window.outputs
        confidences = window.confidences[np.isfinite(window.confidences)]
        # Off the event loop: a large reference takes milliseconds to test.
        features, prediction = await asyncio.to_thread(
            self._drift, prepared, state.prediction_reference, current, outputs
        )
        if calibration is not None:
            verdict = await asyncio.to_thread(evaluate, prepared, calibration, current, mode="calibrated")
            features, window_drifted = verdict.features, verdict.drifted
            rule = (
                "any feature over its threshold calibrated for the window's size; false alarms at most "
                f"{calibration.false_alarm_rate:.2%} of reports"
            )
        else:
            window_drifted = dataset_drifted(
                [feature.drifted for feature in features], self.policy.dataset_drift_share
            )
            rule = f"at least {self.policy.dataset_drift_share:.0%} of the features (Evidently's rule)"
        features, prediction = await asyncio.to_thread(
            _with_distributions, prepared, state.prediction_reference, features, prediction, current, outputs
        )
        shifts: tuple[AttributionShift, ...] = ()
        attribution_note = ""
        if window_drifted or (prediction is not None and prediction.drifted):
            shifts, attribution_note = await self._explain_drift(model, state, current)
        performance = self._performance(model, reference, confidences)
        report = DriftReport(
            model=model,
            model_version=reference.info.model_version,
            reference_dataset=reference.info.dataset,
            reference_dataset_version=reference.info.dataset_version,
            window_size=len(current),
            features=tuple(features),
            dataset_drifted=window_drifted,
            computed_at=datetime.now(UTC),
            predictions_seen=appended.seen,
            prediction=prediction,
            reference_rows=len(reference.rows),
            performance=performance if performance.labelled_rows or len(confidences) else None,
            attribution_shift=shifts,
            attribution_note=attribution_note,
        )
        streak = self.store.save_verdict(report)
        if streak is None:
            log.info(
                "%s: the report on v%d is dropped: a new champion was installed", model, report.model_version
            )
            return None
        _export_metrics(report)
        if streak >= self.policy.trigger_after:
            drifted = report.drifted_features
            summary = (
                f"{len(drifted)} of {len(report.features)} features drifted in {streak} "
                f"reports in a row: "
                + ", ".join(f"{f.feature} ({f.test})" for f in report.features if f.drifted)
                + f"; the decision: {rule}"
                + (
                    f"; the champion's attribution moved most in {describe_movers(report.attribution_shift)}"
                    if report.attribution_shift
                    else ""
                )
            )
            await self._maybe_emit(model, state, "drift", summary, drifted, report_document(report))
        log.info(
            "%s: drift over %d rows: %d of %d features drifted, dataset %s",
            model,
            report.window_size,
            len(report.drifted_features),
            len(features),
            "DRIFTED" if report.dataset_drifted else "stable",
        )
        return report


def _triggered(action: Action, note: str) -> str:
    """What an emitted event set going, in words, from the action the trainer acts on."""
    if action == "feedback":
        return f"feedback batch: {note}"
    if action == "no_new_data":
        return f"none: {note.removeprefix('drift detected; ')} (the trainer makes no version)"
    return "retrain requested from the trainer" + (f": {note}" if note else "")


def _with_distributions(
    prepared: PreparedReference,
    prediction_reference: ColumnReference | None,
    features: Sequence[FeatureDrift],
    prediction: FeatureDrift | None,
    current: Matrix,
    outputs: Matrix,
) -> tuple[list[FeatureDrift], FeatureDrift | None]:
    """Each test's result with its column's distributions, on the bins that test counts in."""
    described = [
        dataclasses.replace(feature, distribution=distribution(column, current[:, index], feature.test))
        for index, (column, feature) in enumerate(zip(prepared.columns, features, strict=True))
    ]
    known = outputs[np.isfinite(outputs)]
    if prediction is not None and prediction_reference is not None and len(known):
        prediction = dataclasses.replace(
            prediction, distribution=distribution(prediction_reference, known, prediction.test)
        )
    return described, prediction


def report_document(report: DriftReport) -> dict[str, object]:
    """The report as JSON-ready data, as it rides on *drift detected*: without the distributions,
    which are for people (up to 150 numbers a feature would make an event of many features large)."""
    document = asdict(report)
    document["computed_at"] = report.computed_at.isoformat()
    for entry in [*document["features"], document.get("prediction") or {}]:
        entry.pop("distribution", None)
        if isinstance(entry.get("p_value"), float) and math.isnan(entry["p_value"]):
            entry["p_value"] = None  # JSON has no NaN
    return document


def _metric(metric: str, predicted: Matrix, truth: Matrix) -> float | None:
    if metric == "accuracy":
        return float(np.mean(predicted == truth))
    spread = float(np.sum((truth - truth.mean()) ** 2))
    return None if spread == 0 else 1.0 - float(np.sum((truth - predicted) ** 2)) / spread


def _per_row(outputs: Sequence[float], rows: int) -> Matrix | None:
    """One prediction per row (the first output of each row), or None when they cannot be paired."""
    values = np.asarray(outputs, dtype=np.float64).ravel()
    if not len(values) or len(values) % rows or not np.isfinite(values).all():
        return None
    return values.reshape(rows, -1)[:, 0].copy()


def _confidences(probabilities: Sequence[Sequence[float]] | None, rows: int) -> Matrix | None:
    if not probabilities:
        return None
    values = np.asarray(probabilities, dtype=np.float64)
    if values.ndim != 2 or len(values) != rows:
        return None
    confidences: Matrix = values.max(axis=1)
    return confidences


def _prediction_rows(model: str, features: Sequence[str], inputs: Sequence[Sequence[float]]) -> Matrix:
    try:
        rows = np.asarray(inputs, dtype=np.float64)
    except ValueError as exc:  # rows of different lengths
        raise InvalidArgument(f"{model}: prediction inputs are not a matrix of numbers: {exc}") from exc
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise InvalidArgument(f"{model}: prediction inputs must be non-empty rows, got shape {rows.shape}")
    if features and len(features) != rows.shape[1]:
        raise InvalidArgument(f"{model}: {len(features)} feature names for rows of {rows.shape[1]} values")
    if not np.isfinite(rows).all():
        raise InvalidArgument(f"{model}: prediction inputs must be finite numbers")
    return rows


def _check_width(model: str, state: _ModelState, width: int, store: MonitorStore) -> None:
    if state.reference is not None:
        expected = len(state.reference.info.features)
        if width != expected:
            raise InvalidArgument(
                f"{model}: prediction rows have {width} features, its reference "
                f"{state.reference.info.dataset}@{state.reference.info.dataset_version} has {expected}"
            )
        return
    earlier = store.model_state(model).window_width
    if earlier is not None and width != earlier:
        raise InvalidArgument(f"{model}: prediction rows have {width} features, earlier ones had {earlier}")


def _export_metrics(report: DriftReport) -> None:
    for feature in [*report.features, *([report.prediction] if report.prediction else [])]:
        FEATURE_DRIFT.labels(report.model, feature.feature).set(feature.statistic)
    DATASET_DRIFTED.labels(report.model).set(int(report.dataset_drifted))


def _forget_feature_gauges(model: str, features: set[str]) -> None:
    """A new reference without these features: their last statistic would be shown forever."""
    for feature in features:
        with contextlib.suppress(KeyError):  # never evaluated, so never exported
            FEATURE_DRIFT.remove(model, feature)
