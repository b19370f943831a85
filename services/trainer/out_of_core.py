"""Training a dataset version too large to hold as one frame: its Parquet file (spooled to disk as it
arrives from ingest) is read segment by segment (segments.py), and only the families that can learn
that way are fitted: ridge and linear regression exactly, logistic regression by averaged SGD.
Random forests and gradient boosting need every row at once: a spec that asks only for those is
refused with the reason.

There is no cross-validation out of core (every fold would be another pass over the file). Each
candidate (the family's grid points, within the spec's trial budget and deadline) learns from the
training rows outside a selection slice (SELECT_SHARE of the rows, chosen by the same row hash as
the hold-out) and is scored on at most SAMPLE_ROWS of that slice; the best is refitted on all the
training rows. The hold-out is the whole-frame path's, so the validator judges the same rows; the
hold-out metric, the ONNX parity gate, the importances and the explanation come from its first
SAMPLE_ROWS rows (a held-out segment), never from the whole file."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.inspection import permutation_importance
from sklearn.metrics import get_scorer

from cascade.errors import FailedPrecondition, InvalidArgument
from cascade.services.trainer.attribution import ExplainLimits, explain_tags
from cascade.services.trainer.segments import (
    INCREMENTAL,
    SEGMENT_ROWS,
    Part,
    Segments,
    fit_segments,
    split_segments,
)
from cascade.services.trainer.training import (
    OnTrial,
    TrainingResult,
    check_parity,
    export_onnx,
    parity_reference,
    training_versions,
)
from cascade.training_spec import Task, TrainingSpec

log = logging.getLogger(__name__)

SAMPLE_ROWS = 20_000  # rows of the selection slice and of the hold-out kept in memory to score
OUT_OF_CORE_TAG = "out_of_core"  # the version's tag saying how it was fitted


def out_of_core_families(spec: TrainingSpec) -> list[str]:
    """The resolved spec's families that can be fitted segment by segment, in its order."""
    assert spec.estimators is not None
    return [name for name in spec.estimators if name in INCREMENTAL]


def train_out_of_core(
    path: Path,
    features: list[str],
    target: str,
    task: Task,
    spec: TrainingSpec,
    on_trial: OnTrial | None = None,
    explain: ExplainLimits | None = None,
    segment_rows: int = SEGMENT_ROWS,
) -> TrainingResult:
    """Fit the spec's incremental families on the Parquet file at `path`, segment by segment, keep
    the best candidate, export it to ONNX and gate it on held-out rows as `train` does."""
    started = time.perf_counter()
    spec = spec.resolved(spec.task or task)
    families = out_of_core_families(spec)
    if not families:
        assert spec.estimators is not None
        raise FailedPrecondition(
            f"the version is too large to train whole and {', '.join(spec.estimators)} cannot be fitted "
            f"segment by segment; the families that can: {', '.join(sorted(INCREMENTAL))}"
        )

    def part(name: Part) -> Segments:
        return split_segments(path, features, target, spec.holdout_fraction, name, segment_rows)

    x_select, y_select = _sample(part("select"), task)
    x_holdout, y_holdout = _sample(part("holdout"), task)
    if len(x_select) == 0 or len(x_holdout) == 0:
        raise InvalidArgument("too few rows to train: no rows to select on or to hold out")
    scorer = get_scorer(spec.primary_metric)
    candidates = list(itertools.islice(_candidates(spec, families), spec.max_trials))
    deadline = time.monotonic() + spec.max_seconds
    trials: list[dict[str, Any]] = []
    best: tuple[float, str, dict[str, Any]] | None = None
    for number, (name, params) in enumerate(candidates):
        if trials and time.monotonic() > deadline:
            log.warning(
                "out of core: %d of %d candidates tried by the deadline", len(trials), len(candidates)
            )
            break
        trial_started = time.perf_counter()
        model = fit_segments(name, params, part("fit"), spec.seed)
        score = float(scorer(model, x_select, y_select))
        trials.append(
            {
                "number": number,
                "estimator": name,
                "params": {k: str(v) for k, v in params.items()},
                "score": score,
                "folds_scored": 1,
                "pruned": False,
                "seconds": round(time.perf_counter() - trial_started, 4),
                "out_of_core": True,
            }
        )
        if best is None or score > best[0]:
            best = (score, name, params)
        if on_trial is not None:
            on_trial(
                {
                    "trial": number + 1,
                    "max_trials": len(candidates),
                    "estimator": name,
                    "state": "complete",
                    "score": score,
                    "best_score": best[0],
                }
            )
        log.info("out of core: candidate %d/%d %s %s: %.4f", number + 1, len(candidates), name, params, score)
    assert best is not None
    searched = time.perf_counter()
    selection_score, name, params = best
    model = fit_segments(name, params, part("train"), spec.seed)
    refitted = time.perf_counter()

    onnx_bytes = export_onnx(model, len(features), task)
    check_parity(model, onnx_bytes, x_holdout, task)
    exported = time.perf_counter()
    importance = permutation_importance(
        model, x_holdout, y_holdout, n_repeats=5, random_state=spec.seed, scoring=scorer
    )
    importance_done = time.perf_counter()
    tags = explain_tags(onnx_bytes, x_select, features, x_holdout, explain or ExplainLimits(), spec.seed)
    finished = time.perf_counter()
    metric = spec.primary_metric
    return TrainingResult(
        onnx_bytes=onnx_bytes,
        params={"estimator": name, **{k: str(v) for k, v in params.items()}},
        metrics={
            f"selection_{metric}": selection_score,
            f"holdout_{metric}": float(scorer(model, x_holdout, y_holdout)),
        },
        trials=trials,
        train_seconds=finished - started,
        feature_importance={
            f: round(float(v), 6) for f, v in zip(features, importance.importances_mean, strict=True)
        },
        durations={
            "search": round(searched - started, 4),
            "refit": round(refitted - searched, 4),
            "export_and_parity": round(exported - refitted, 4),
            "importance": round(importance_done - exported, 4),
            "attribution": round(finished - importance_done, 4),
        },
        versions=training_versions(name),
        parity_reference=parity_reference(model, x_holdout, task),
        explain_tags=tags,
        out_of_core=f"{name} fitted segment by segment ({segment_rows} rows a segment); "
        f"{len(trials)} candidates scored on {len(x_select)} selection rows, no cross-validation",
    )


def _candidates(spec: TrainingSpec, families: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each family's grid points, the families interleaved, so a small budget still tries each."""
    grids = []
    for name in families:
        space = spec.search_space[name]
        points = itertools.product(*(bounds.grid() for bounds in space.values()))
        grids.append([(name, dict(zip(space, point, strict=True))) for point in points])
    for round_ in itertools.zip_longest(*grids):
        yield from (candidate for candidate in round_ if candidate is not None)


def _sample(segments: Segments, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """The first SAMPLE_ROWS rows of `segments` (the rest is never read)."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    kept = 0
    for x, y in segments():
        xs.append(x[: SAMPLE_ROWS - kept])
        ys.append(y[: SAMPLE_ROWS - kept])
        kept += len(xs[-1])
        if kept >= SAMPLE_ROWS:
            break
    if not xs:
        return np.empty((0, 0), dtype=np.float32), np.empty(0)
    labels = np.concatenate(ys)
    return np.concatenate(xs), labels.astype(np.int64) if task == "classification" else labels
