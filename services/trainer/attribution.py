"""What a version carries for explaining its predictions, transport-free: a small background sample
of the rows it learned from (the `explain_background` tag, which Explain and the monitor integrate
attributions against) and its global attribution (the `global_attribution` tag: mean |attribution|
per feature on held-out rows), computed with cascade.explain on the exported ONNX, the very
artifact serving runs, within a bound of rows, model evaluations and seconds so a run stays fast.

A model the explainer cannot take within the bound gets no `global_attribution` (said in the log):
an explanation is an aid, never a reason to fail a run. CPU-bound: call it in a worker thread."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cascade.explain import ExplainBudget, explainer_within, sample_rows

__all__ = [
    "BACKGROUND_TAG",
    "GLOBAL_ATTRIBUTION_TAG",
    "ExplainLimits",
    "background_record",
    "background_sample",
    "global_attribution_record",
]

log = logging.getLogger(__name__)

BACKGROUND_TAG = "explain_background"
GLOBAL_ATTRIBUTION_TAG = "global_attribution"
MAX_BACKGROUND_ROWS = 100  # the contract of the `explain_background` tag


@dataclass(frozen=True)
class ExplainLimits:
    """How much explaining a version may cost (see TrainerSettings for each field)."""

    background_rows: int = MAX_BACKGROUND_ROWS
    rows: int = 200
    max_evaluations: int = 500_000
    seconds: float = 20.0

    def __post_init__(self) -> None:
        if not 1 <= self.background_rows <= MAX_BACKGROUND_ROWS:
            raise ValueError(f"background_rows must be 1 to {MAX_BACKGROUND_ROWS}: {self.background_rows}")


def background_sample(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most `size` of `rows`, the same for the same rows and seed (cascade.explain.sample_rows)."""
    return sample_rows(rows, size, seed)


def background_record(features: list[str], background: np.ndarray) -> str:
    """The `explain_background` tag: the rows as the model reads them (float32), each value written
    as the shortest decimal that reads back to the same float32."""
    rows = [[float(str(value)) for value in row] for row in background.astype(np.float32)]
    return json.dumps({"features": list(features), "rows": rows})


def global_attribution_record(
    onnx_bytes: bytes,
    background: np.ndarray,
    features: list[str],
    rows: np.ndarray,
    limits: ExplainLimits,
    seed: int,
) -> str | None:
    """The `global_attribution` tag: mean |attribution| per feature over at most `limits.rows` of
    `rows`, with the method and the output space it decomposes; None when the model cannot be
    explained within the limits (or at all)."""
    if not len(rows) or not len(background):
        return None
    started = time.perf_counter()
    try:
        # A model neither exact path reads (an imported one) gets KernelSHAP fitted to the budget.
        explainer, count = explainer_within(
            onnx_bytes,
            background,
            features,
            min(len(rows), limits.rows),
            max_evaluations=limits.max_evaluations,
            max_background=limits.background_rows,
        )
        sample = background_sample(rows, count, seed).astype(np.float32)
        budget = ExplainBudget(
            max_rows=len(sample), max_evaluations=limits.max_evaluations, deadline_seconds=limits.seconds
        )
        explanation = explainer.explain(sample, budget=budget)
    except Exception as exc:  # ExplainError for a budget or a graph it cannot take; an aid, not a gate
        log.warning("no global attribution for this version: %s: %s", type(exc).__name__, exc)
        return None
    mean_abs = np.abs(np.asarray(explanation.attributions, dtype=np.float64)).mean(axis=0)
    record: dict[str, Any] = {
        "method": explanation.method,
        "output_space": explanation.output_space,
        "rows": len(sample),
        "mean_abs": {name: round(float(value), 6) for name, value in zip(features, mean_abs, strict=True)},
    }
    log.info(
        "global attribution (%s, %s) on %d rows in %.2fs",
        explanation.method,
        explanation.output_space,
        len(sample),
        time.perf_counter() - started,
    )
    return json.dumps(record)


def explain_tags(
    onnx_bytes: bytes,
    training_rows: np.ndarray,
    features: list[str],
    holdout_rows: np.ndarray,
    limits: ExplainLimits,
    seed: int,
) -> dict[str, str]:
    """A new version's explanation tags: its background (sampled from `training_rows`) and, when
    it can be computed within the limits, its global attribution on `holdout_rows`."""
    background = background_sample(training_rows, limits.background_rows, seed)
    tags = {BACKGROUND_TAG: background_record(features, background)}
    attribution = global_attribution_record(onnx_bytes, background, features, holdout_rows, limits, seed)
    if attribution is not None:
        tags[GLOBAL_ATTRIBUTION_TAG] = attribution
    return tags
