"""Drift explained, transport-free: which features the champion's predictions lean on differently in
the window than on its reference.

For each feature, its *share* of the total |attribution| (cascade.explain's Shapley attributions of
the champion's ONNX, the artifact serving runs, rows averaged): once on a bounded sample of the
reference rows (the baseline, per champion), and on the latest rows of a drifted window. The report
lists the features whose share moved most. Shares, not raw attributions: a window whose predictions
all grew more confident scales every attribution alike and moves no share, while a shifted feature
the model relies on takes weight from the others (or loses it, when the shift pushes it where the
model is flat).

The background the attributions integrate against is the version's `explain_background` tag (rows
of its training data, written by the trainer), or a deterministic sample of the reference rows for a
version without one. CPU-bound: call it in a worker thread."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cascade.explain import (
    ExplainBudget,
    OnnxExplainer,
    attribution_shares,
    explainer_within,
    sample_rows,
)

__all__ = [
    "AttributionBaseline",
    "AttributionLimits",
    "AttributionShift",
    "attribution_baseline",
    "attribution_shift",
    "background_of",
    "fitted_explainer",
    "sample_rows",
]

log = logging.getLogger(__name__)

BACKGROUND_TAG = "explain_background"
REFERENCE_FACTOR = 4  # reference rows explained per window row, on an exact path
Matrix = NDArray[np.float64]


@dataclass(frozen=True)
class AttributionShift:
    """One feature's share of the champion's total |attribution| on the reference and in the window."""

    feature: str
    reference_share: float
    window_share: float

    @property
    def moved(self) -> float:
        return self.window_share - self.reference_share


@dataclass(frozen=True)
class AttributionLimits:
    """How much explaining one drifted window may cost (see MonitorSettings for each field)."""

    rows: int = 100
    background_rows: int = 100
    max_evaluations: int = 500_000
    seconds: float = 10.0
    features: int = 10  # entries a report keeps, the largest moves first

    def budget(self, rows: int) -> ExplainBudget:
        return ExplainBudget(
            max_rows=rows, max_evaluations=self.max_evaluations, deadline_seconds=self.seconds
        )


@dataclass(frozen=True)
class AttributionBaseline:
    """A champion's explainer and its features' shares on a sample of its reference rows."""

    explainer: OnnxExplainer
    features: tuple[str, ...]
    reference_shares: Matrix
    reference_rows: int
    window_rows: int  # the latest rows of a window explained (fewer than limits.rows for KernelSHAP)
    method: str
    output_space: str
    background: str  # where the background came from, in words


def background_of(tags: dict[str, str], features: Sequence[str]) -> Matrix | None:
    """The `explain_background` tag's rows, if it has them for exactly `features`, in that order."""
    text = tags.get(BACKGROUND_TAG)
    if not text:
        return None
    try:
        document: Any = json.loads(text)
        rows = np.asarray(document["rows"], dtype=np.float64)
        named = list(document["features"])
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("an unreadable %s tag is ignored: %s", BACKGROUND_TAG, exc)
        return None
    if named != list(features) or rows.ndim != 2 or rows.shape[1] != len(features) or not len(rows):
        log.warning("the %s tag names other features than the reference's: ignored", BACKGROUND_TAG)
        return None
    if not np.isfinite(rows).all():
        return None
    return rows


def fitted_explainer(
    artifact: bytes, background: Matrix, features: Sequence[str], rows: int, limits: AttributionLimits
) -> tuple[OnnxExplainer, int]:
    """The explainer, and how many rows it may explain within `limits.max_evaluations`
    (cascade.explain.explainer_within: shares averaged over many rows tolerate KernelSHAP's noisier
    per-row values of a summarised background and fewer coalitions)."""
    return explainer_within(
        artifact,
        background,
        features,
        rows,
        max_evaluations=limits.max_evaluations,
        max_background=limits.background_rows,
    )


def attribution_baseline(
    artifact: bytes,
    features: Sequence[str],
    reference_rows: Matrix,
    background: Matrix | None,
    limits: AttributionLimits,
) -> AttributionBaseline:
    """The champion's explainer, and the shares on a deterministic sample of its reference rows.
    Raises cascade.explain's ExplainError when the model cannot be explained within the limits."""
    tagged = background is not None
    chosen = background if background is not None else sample_rows(reference_rows, limits.background_rows, 1)
    explainer, rows = fitted_explainer(artifact, chosen, features, limits.rows, limits)
    # An exact path costs an evaluation a row, and the reference is explained once per champion:
    # more of its rows make its shares steadier, so a window's noise is most of what is compared.
    reference_count = rows if explainer.method == "kernel" else REFERENCE_FACTOR * rows
    sample = sample_rows(reference_rows, reference_count).astype(np.float32)
    explanation = explainer.explain(sample, budget=limits.budget(len(sample)))
    kept = len(explainer.background)
    return AttributionBaseline(
        explainer=explainer,
        features=tuple(features),
        reference_shares=np.asarray(attribution_shares(explanation), dtype=np.float64),
        reference_rows=len(sample),
        window_rows=rows,
        method=explanation.method,
        output_space=explanation.output_space,
        background=f"{kept} rows of the version's {BACKGROUND_TAG}"
        if tagged
        else f"{kept} reference rows (the version has no {BACKGROUND_TAG})",
    )


def attribution_shift(
    baseline: AttributionBaseline, window: Matrix, limits: AttributionLimits
) -> tuple[tuple[AttributionShift, ...], str]:
    """The features whose share moved most between the reference sample and the window's latest
    `limits.rows` rows, largest |move| first (at most `limits.features`), and how they were measured."""
    latest = window[-baseline.window_rows :].astype(np.float32)
    explanation = baseline.explainer.explain(latest, budget=limits.budget(len(latest)))
    window_shares = np.asarray(attribution_shares(explanation), dtype=np.float64)
    moved = np.abs(window_shares - baseline.reference_shares)
    order = np.argsort(-moved, kind="stable")[: limits.features]
    shifts = tuple(
        AttributionShift(
            feature=baseline.features[index],
            reference_share=round(float(baseline.reference_shares[index]), 6),
            window_share=round(float(window_shares[index]), 6),
        )
        for index in order
    )
    note = (
        f"{baseline.method} Shapley attributions ({baseline.output_space} space) of the champion's ONNX "
        f"on {baseline.reference_rows} reference rows and the window's latest {len(latest)}, against "
        f"{baseline.background}"
    )
    return shifts, note


def describe_movers(shifts: Sequence[AttributionShift], count: int = 3) -> str:
    """`mean radius 12.0% -> 41.5%, ...`: the top movers, for a summary line."""
    return ", ".join(
        f"{shift.feature} {shift.reference_share:.1%} -> {shift.window_share:.1%}" for shift in shifts[:count]
    )
