"""OnnxExplainer: Shapley attributions of a Cascade ONNX artifact's outputs against background rows,
by the fastest exact method its graph allows, else by KernelSHAP over the session.

    linear  Scaler + LinearClassifier/LinearRegressor: phi_i = w_i (x_i - mean(background_i)) in the
            margin (classifiers: log-odds / softmax logit) or the value: exact, no model evaluation.
    tree    TreeEnsembleClassifier/Regressor: exact interventional TreeSHAP against each background
            row, in the probability (forests), the margin (boosted classifiers: before the
            LOGISTIC/SOFTMAX) or the value (regressors).
    kernel  anything else: KernelSHAP evaluating the session in batches (exact enumeration when the
            features are few), in the probability or the value.

An exact path is trusted only after it reproduces the session's own outputs on the background rows;
otherwise the artifact gets KernelSHAP, which explains whatever the session computes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from cascade.explain._kernel import KernelShap, default_samples
from cascade.explain._model import OnnxModel
from cascade.explain._types import (
    ExplainBudget,
    ExplainBudgetExceeded,
    ExplainError,
    ExplainUnsupported,
    Explanation,
    Method,
    OutputSpace,
)

__all__ = ["OnnxExplainer", "attribution_shares", "global_attribution"]

log = logging.getLogger(__name__)

Floats = NDArray[np.float64]
# How closely an exact path must reproduce the session on the background to be trusted: the
# trainer's own ONNX parity tolerance (probabilities absolute, values relative to their size).
REPRODUCTION_TOLERANCE = 1e-4


class ExactPath(Protocol):
    """A closed-form explainer read from the graph."""

    @property
    def method(self) -> Method: ...

    @property
    def output_space(self) -> OutputSpace: ...

    def predict(self, rows: NDArray[np.float32]) -> Floats:
        """What the session answers (probabilities [N, C] or values [N, 1]), recomputed from the
        weights read: the check that they were read right."""
        ...

    def explain(
        self, rows: NDArray[np.float32], classes: NDArray[np.int64], deadline: float | None
    ) -> tuple[Floats, Floats, Floats]:
        """(base values [N], attributions [N, F], outputs [N]) of each row's class in output_space."""
        ...


def _reproduces(path: ExactPath, rows: NDArray[np.float32], scores: Floats) -> float:
    """The largest gap between the path's recomputed outputs and the session's (inf if misshapen)."""
    predicted = path.predict(rows)
    if predicted.shape != scores.shape:
        return float("inf")
    gap = np.abs(predicted - scores) / np.maximum(1.0, np.abs(scores))
    return float(gap.max()) if gap.size else 0.0


def _exact_path(model: OnnxModel, background: NDArray[np.float32], n_classes: int) -> ExactPath | None:
    # Imported here, not at the top: each reader is only needed for its own kind of graph.
    from cascade.explain._linear import read_linear
    from cascade.explain._tree import read_tree

    linear = read_linear(model.proto, model.n_features, n_classes, background)
    if linear is not None:
        return linear
    return read_tree(model.proto, model.n_features, n_classes, background)


class OnnxExplainer:
    """Explains one artifact against fixed background rows; build once per version, reuse per call.

    `background` [B, F] are the reference rows attributions integrate over (the version's
    `explain_background`); above `max_background` rows, that many are kept, drawn by `seed`. `method`
    "kernel" forces KernelSHAP (benchmarks, cross-checks); `kernel_samples` is its coalitions per row
    (default shap's 2F + 2048). Not thread-safe: one per thread or process."""

    def __init__(
        self,
        onnx_bytes: bytes,
        background: NDArray[np.floating] | Sequence[Sequence[float]],
        features: Sequence[str],
        max_background: int = 100,
        *,
        method: Literal["auto", "kernel"] = "auto",
        kernel_samples: int | None = None,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.features = [str(name) for name in features]
        n_features = len(self.features)
        if n_features == 0:
            raise ExplainUnsupported("an explainer needs at least one feature name")
        if len(set(self.features)) != n_features:
            raise ExplainUnsupported("feature names must be unique")
        if max_background < 1:
            raise ExplainError(f"max_background must be at least 1: {max_background}")
        rows = np.asarray(background, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != n_features or len(rows) == 0:
            raise ExplainUnsupported(
                f"the background must be rows of {n_features} features, not shape {list(rows.shape)}"
            )
        if not np.isfinite(rows).all():
            raise ExplainUnsupported("the background has NaN or infinite values")
        if len(rows) > max_background:
            chosen = np.random.default_rng(seed).choice(len(rows), size=max_background, replace=False)
            rows = rows[np.sort(chosen)]
        self.background: NDArray[np.float32] = np.ascontiguousarray(rows)
        self.model = OnnxModel(onnx_bytes, n_features, threads=threads)
        self.background_scores = self.model.scores(self.background)
        self.classifier = self.model.classifier
        self.n_classes = self.background_scores.shape[1] if self.classifier else 0
        self.class_labels = self.model.class_labels(self.n_classes)
        self._exact = _exact_path(self.model, self.background, self.n_classes) if method == "auto" else None
        if self._exact is not None:
            gap = _reproduces(self._exact, self.background, self.background_scores)
            if not gap <= REPRODUCTION_TOLERANCE:
                log.warning(
                    "the %s path does not reproduce this artifact (gap %.2e): KernelSHAP instead",
                    self._exact.method,
                    gap,
                )
                self._exact = None
        self._kernel = KernelShap(
            self.model,
            self.background,
            self.background_scores,
            kernel_samples or default_samples(n_features),
            seed,
        )
        self.method: Method = self._exact.method if self._exact is not None else "kernel"
        self.output_space: OutputSpace = (
            self._exact.output_space
            if self._exact is not None
            else ("probability" if self.classifier else "value")
        )

    def _rows(self, rows: NDArray[np.floating] | Sequence[Sequence[float]]) -> NDArray[np.float32]:
        try:
            values = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ExplainError(f"rows must be numbers: {exc}") from exc
        width = len(self.features)
        if values.ndim != 2 or values.shape[1] != width or len(values) == 0:
            raise ExplainError(
                f"rows must have shape [rows, {width}] (the features), not {list(values.shape)}"
            )
        finite = np.isfinite(values)
        if not finite.all():
            row, column = (int(i) for i in np.argwhere(~finite)[0])
            raise ExplainError(
                f"row {row} has a NaN or infinite value (feature {self.features[column]!r}); "
                "explanations need finite values"
            )
        return np.ascontiguousarray(values)

    def _classes(self, output: int | None, scores: Floats) -> NDArray[np.int64]:
        if not self.classifier:
            if output is not None:
                raise ExplainError("a regressor has no classes: explain its value with output=None")
            return np.zeros(len(scores), dtype=np.int64)
        if output is None:
            return np.asarray(scores.argmax(axis=1), dtype=np.int64)
        if not 0 <= output < self.n_classes:
            raise ExplainError(
                f"class index {output} is out of range: the model has {self.n_classes} classes"
            )
        return np.full(len(scores), output, dtype=np.int64)

    def explain(
        self,
        rows: NDArray[np.floating] | Sequence[Sequence[float]],
        output: int | None = None,
        budget: ExplainBudget | None = None,
    ) -> Explanation:
        """Attributions of `output` (a class index; None: each row's predicted class, or a
        regressor's value) for every row of `rows` [N, F], within `budget`."""
        started = time.perf_counter()
        budget = budget or ExplainBudget()
        deadline = None if budget.deadline_seconds is None else time.monotonic() + budget.deadline_seconds
        values = self._rows(rows)
        if budget.max_rows is not None and len(values) > budget.max_rows:
            raise ExplainBudgetExceeded(f"{len(values)} rows asked, budget {budget.max_rows} rows")
        if budget.max_evaluations is not None and len(values) > budget.max_evaluations:
            raise ExplainBudgetExceeded(
                f"needs at least {len(values)} evaluations (one per row), budget {budget.max_evaluations}"
            )
        scores = self.model.scores(values)
        classes = self._classes(output, scores)
        evaluations = len(values)
        if self._exact is not None:
            base_values, attributions, outputs = self._exact.explain(values, classes, deadline)
        else:
            left = None if budget.max_evaluations is None else budget.max_evaluations - evaluations
            base_values, attributions, used = self._kernel.explain(values, scores, classes, left, deadline)
            evaluations += used
            outputs = scores[np.arange(len(values)), classes]
        labels: list[str] | None = None
        if self.classifier:
            names = self.class_labels or [str(index) for index in range(self.n_classes)]
            labels = [names[int(index)] for index in classes]
        return Explanation(
            features=list(self.features),
            method=self.method,
            output_space=self.output_space,
            class_indices=classes if self.classifier else np.full(len(values), -1, dtype=np.int64),
            class_labels=labels,
            base_values=np.asarray(base_values, dtype=np.float64),
            attributions=np.asarray(attributions, dtype=np.float64),
            outputs=np.asarray(outputs, dtype=np.float64),
            evaluations=evaluations,
            seconds=time.perf_counter() - started,
        )


def global_attribution(
    explainer: OnnxExplainer,
    rows: NDArray[np.floating] | Sequence[Sequence[float]],
    budget: ExplainBudget | None = None,
) -> dict[str, float]:
    """Mean |attribution| of each feature over `rows` (each row's predicted class or value)."""
    explanation = explainer.explain(rows, budget=budget)
    mean_abs = np.abs(explanation.attributions).mean(axis=0)
    return {name: float(value) for name, value in zip(explanation.features, mean_abs, strict=True)}


def attribution_shares(explanation: Explanation) -> NDArray[np.float64]:
    """[F]: each feature's share of a row's total |attribution|, averaged over the rows. Shares, not
    magnitudes, so a model whose outputs merely scale keeps its shares; rows whose attributions are
    all zero (the output equals the base) carry no shares and are left out; all-zero gives zeros."""
    magnitudes = np.abs(np.asarray(explanation.attributions, dtype=np.float64))
    totals = magnitudes.sum(axis=1)
    moved = totals > 0
    if not moved.any():
        return np.zeros(magnitudes.shape[1], dtype=np.float64)
    shares: NDArray[np.float64] = (magnitudes[moved] / totals[moved, None]).mean(axis=0)
    return shares
