"""Fitting an explanation to a budget of model evaluations, for callers that explain many rows to
average them (the trainer's global attribution, the monitor's drift shares): what they need is a
steady mean, so a KernelSHAP model gets a smaller background and fewer coalitions, then fewer rows,
rather than no explanation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from cascade.explain._explainer import OnnxExplainer

__all__ = ["KERNEL_BACKGROUND", "explainer_within", "sample_rows"]

Scalar = TypeVar("Scalar", bound=np.generic)

# Background rows KernelSHAP integrates over when fitted to a budget: each costs an evaluation per
# coalition, and a mean over many rows tolerates the noisier values of a summarised background.
KERNEL_BACKGROUND = 20


def sample_rows(rows: NDArray[Scalar], size: int, seed: int = 0) -> NDArray[Scalar]:
    """At most `size` of `rows`, drawn without replacement by `seed` and kept in their order: the
    same rows and seed always give the same sample (a copy when all rows are kept)."""
    if len(rows) <= size:
        return rows.copy()
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), size=size, replace=False))]


def explainer_within(
    onnx_bytes: bytes,
    background: NDArray[np.generic],
    features: Sequence[str],
    rows: int,
    *,
    max_evaluations: int,
    max_background: int,
) -> tuple[OnnxExplainer, int]:
    """The explainer for the artifact, and how many of `rows` it may explain within
    `max_evaluations`. An exact path (linear, tree) costs one evaluation a row, so it takes them
    all. KernelSHAP costs coalitions x background rows a row: its background is summarised to
    KERNEL_BACKGROUND rows and its coalitions, then the rows, cut to fit."""
    names = list(features)
    explainer = OnnxExplainer(
        onnx_bytes, background.astype(np.float32), features=names, max_background=max_background
    )
    if explainer.method != "kernel":
        return explainer, rows
    kept = min(len(background), max_background, KERNEL_BACKGROUND)
    affordable = (max_evaluations - rows) // (rows * kept)  # each row is also evaluated once itself
    coalitions = min(2 * len(names) + 2048, max(2 * len(names) + 2, affordable))
    explainer = OnnxExplainer(
        onnx_bytes,
        background.astype(np.float32),
        features=names,
        max_background=kept,
        kernel_samples=coalitions,
    )
    return explainer, max(1, min(rows, max_evaluations // (kept * coalitions + 1)))
