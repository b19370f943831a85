"""The monitor's domain, free of transports: per model, a window of the latest prediction inputs,
the reference data its champion was trained on, and a drift report every `evaluate_every` new rows.

Predictions may arrive before any reference (they travel on another topic): they just fill the
window, and the first evaluation happens as soon as the reference is in. Delivery is at-least-once,
so a redelivered batch is appended twice; a window of recent traffic tolerates that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from prometheus_client import Counter, Gauge

from services.monitor.drift import dataset_drifted, feature_drift
from services.monitor.store import DriftReport, MonitorStore, ReferenceInfo
from shared.errors import InvalidArgument, NotFound

__all__ = ["MonitorCore", "Reference", "ReferenceSource", "Window"]

log = logging.getLogger(__name__)

PREDICTIONS = Counter("cascade_monitor_predictions_total", "Prediction rows received, by model.", ["model"])
FEATURE_DRIFT = Gauge(
    "cascade_monitor_feature_drift_statistic",
    "KS statistic of the latest window against the reference, by feature.",
    ["model", "feature"],
)
DATASET_DRIFTED = Gauge(
    "cascade_monitor_dataset_drifted", "1 when the latest report found dataset drift, else 0.", ["model"]
)

Matrix = NDArray[np.float64]


@dataclass(frozen=True)
class Reference:
    info: ReferenceInfo
    rows: Matrix  # reference rows x features, in `info.features` order


class ReferenceSource(Protocol):
    """Where the reference data of a promoted model version comes from."""

    async def fetch(self, model: str, model_version: int) -> Reference: ...


class Window:
    """Ring buffer of the most recent `size` rows; a batch is written in one vectorised assignment."""

    def __init__(self, size: int, width: int) -> None:
        self._rows = np.empty((size, width), dtype=np.float64)
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

    def append(self, batch: Matrix) -> None:
        kept = batch[-self.size :]  # older rows of a huge batch would be overwritten anyway
        positions = (self._next + np.arange(len(kept))) % self.size
        self._rows[positions] = kept
        self._next = (self._next + len(kept)) % self.size
        self._filled = min(self._filled + len(kept), self.size)

    def rows(self) -> Matrix:
        """A copy of the rows held, oldest first."""
        if self._filled < self.size:
            return self._rows[: self._filled].copy()
        return np.roll(self._rows, -self._next, axis=0)


@dataclass
class _ModelState:
    window: Window | None = None
    reference: Reference | None = None
    pending: int = 0  # rows received since the last evaluation
    seen: int = 0  # rows received in all, carried over restarts by the latest report


class MonitorCore:
    def __init__(
        self,
        store: MonitorStore,
        source: ReferenceSource,
        window_size: int,
        evaluate_every: int,
        p_value_threshold: float,
    ) -> None:
        self.store = store
        self.source = source
        self.window_size = window_size
        self.evaluate_every = evaluate_every
        self.p_value_threshold = p_value_threshold
        self._models: dict[str, _ModelState] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def set_reference(self, model: str, model_version: int) -> DriftReport | None:
        """Make `model_version`'s training data the model's reference. Idempotent: the current
        reference is kept as is; any other version (a rollback too) is fetched and replaces it."""
        async with self._lock(model):
            state = self._state(model)
            if state.reference is not None and state.reference.info.model_version == model_version:
                log.info("%s v%d is already the reference; nothing changes", model, model_version)
                return None
            reference = await self.source.fetch(model, model_version)
            self.store.save_reference(reference.info)
            self._install(model, state, reference)
            return await self._evaluate_if_due(model, state)

    async def record_predictions(
        self, model: str, features: Sequence[str], inputs: Sequence[Sequence[float]]
    ) -> DriftReport | None:
        """Append a batch of prediction inputs to the model's window; returns the report if one was due."""
        if not inputs:
            return None
        rows = _prediction_rows(model, features, inputs)
        async with self._lock(model):
            state = self._state(model)
            await self._restore_reference(model, state)
            _check_width(model, state, rows.shape[1])
            if state.window is None:
                state.window = Window(self.window_size, rows.shape[1])
            state.window.append(rows)
            state.pending += len(rows)
            state.seen += len(rows)
            PREDICTIONS.labels(model).inc(len(rows))
            return await self._evaluate_if_due(model, state)

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
    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    def _state(self, model: str) -> _ModelState:
        if model not in self._models:
            previous = self.store.latest_report(model)
            self._models[model] = _ModelState(seen=previous.predictions_seen if previous else 0)
        return self._models[model]

    async def _restore_reference(self, model: str, state: _ModelState) -> None:
        """After a restart the promotion event is long consumed: fetch the stored reference again."""
        if state.reference is not None:
            return
        info = self.store.reference(model)
        if info is not None:
            log.info("restoring the reference of %s from v%d", model, info.model_version)
            self._install(model, state, await self.source.fetch(model, info.model_version))

    def _install(self, model: str, state: _ModelState, reference: Reference) -> None:
        previous = state.reference
        state.reference = reference
        if previous is not None:
            _forget_feature_gauges(model, set(previous.info.features) - set(reference.info.features))
        if state.window is not None and state.window.width != len(reference.info.features):
            log.warning(
                "%s: dropping %d buffered rows of %d features; the new reference has %d",
                model,
                len(state.window),
                state.window.width,
                len(reference.info.features),
            )
            state.window = None
            state.pending = 0
        log.info(
            "%s v%d: reference is %s@%s (%d rows)",
            model,
            reference.info.model_version,
            reference.info.dataset,
            reference.info.dataset_version,
            reference.info.rows,
        )

    async def _evaluate_if_due(self, model: str, state: _ModelState) -> DriftReport | None:
        reference, window = state.reference, state.window
        if reference is None or window is None or state.pending < self.evaluate_every:
            return None
        current = window.rows()
        # Off the event loop: a large reference takes tens of milliseconds to test.
        features = await asyncio.to_thread(
            feature_drift, current, reference.rows, reference.info.features, self.p_value_threshold
        )
        report = DriftReport(
            model=model,
            model_version=reference.info.model_version,
            reference_dataset=reference.info.dataset,
            reference_dataset_version=reference.info.dataset_version,
            window_size=len(current),
            features=tuple(features),
            dataset_drifted=dataset_drifted([feature.drifted for feature in features]),
            computed_at=datetime.now(UTC),
            predictions_seen=state.seen,
        )
        self.store.save_report(report)
        state.pending = 0
        _export_metrics(report)
        log.info(
            "%s: drift over %d rows: %d of %d features drifted, dataset %s",
            model,
            report.window_size,
            len(report.drifted_features),
            len(features),
            "DRIFTED" if report.dataset_drifted else "stable",
        )
        return report


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


def _check_width(model: str, state: _ModelState, width: int) -> None:
    if state.reference is not None:
        expected = len(state.reference.info.features)
        if width != expected:
            raise InvalidArgument(
                f"{model}: prediction rows have {width} features, its reference "
                f"{state.reference.info.dataset}@{state.reference.info.dataset_version} has {expected}"
            )
    elif state.window is not None and width != state.window.width:
        raise InvalidArgument(
            f"{model}: prediction rows have {width} features, earlier ones had {state.window.width}"
        )


def _export_metrics(report: DriftReport) -> None:
    for feature in report.features:
        FEATURE_DRIFT.labels(report.model, feature.feature).set(feature.statistic)
    DATASET_DRIFTED.labels(report.model).set(int(report.dataset_drifted))


def _forget_feature_gauges(model: str, features: set[str]) -> None:
    """A new reference without these features: their last statistic would be shown forever."""
    for feature in features:
        with contextlib.suppress(KeyError):  # never evaluated, so never exported
            FEATURE_DRIFT.remove(model, feature)
