"""Training, transport-free: search a pipeline, refit, export to ONNX, prove the export predicts the same."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import pandas as pd
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from shared.errors import FailedPrecondition, InvalidArgument
from shared.splits import holdout_mask

log = logging.getLogger(__name__)

Task = Literal["classification", "regression"]
INPUT_NAME = "input"
PROBABILITY_TOLERANCE = 1e-4


@dataclass
class TrainingResult:
    onnx_bytes: bytes
    params: dict[str, str]
    metrics: dict[str, float]
    trials: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


def _search(task: Task, seed: int, folds: int) -> GridSearchCV:
    if task == "classification":
        pipeline = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000))])
        grid = {"model__C": [0.1, 1.0, 10.0]}
        splitter: StratifiedKFold | KFold = StratifiedKFold(folds, shuffle=True, random_state=seed)
        scoring = "accuracy"
    else:
        pipeline = Pipeline([("scale", StandardScaler()), ("model", Ridge())])
        grid = {"model__alpha": [0.1, 1.0, 10.0]}
        splitter = KFold(folds, shuffle=True, random_state=seed)
        scoring = "r2"
    return GridSearchCV(pipeline, grid, cv=splitter, scoring=scoring, n_jobs=1)


def train(
    frame: pd.DataFrame, features: list[str], target: str, task: Task, seed: int, folds: int, holdout: float
) -> TrainingResult:
    """Grid-search a scaled linear pipeline on the training rows, refit the best, export to ONNX
    and check on the held-out rows that ONNX and scikit-learn agree."""
    started = time.perf_counter()
    held_out = holdout_mask(frame[[*features, target]], holdout)
    train_rows, holdout_rows = frame[~held_out], frame[held_out]
    if len(train_rows) < 4 * folds or len(holdout_rows) == 0:
        raise InvalidArgument(f"too few rows to train: {len(train_rows)} train, {len(holdout_rows)} held out")
    x_train = train_rows[features].to_numpy(dtype=np.float32)
    y_train = train_rows[target].to_numpy()
    if task == "classification":
        y_train = y_train.astype(np.int64)
        if len(np.unique(y_train)) < 2:
            raise InvalidArgument("classification needs at least two classes in the training rows")

    search = _search(task, seed, folds)
    search.fit(x_train, y_train)
    trials = [
        {"params": {k: str(v) for k, v in params.items()}, "score": float(score)}
        for params, score in zip(
            search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
        )
    ]
    log.info("search done: %d trials, best %s = %.4f", len(trials), search.scoring, search.best_score_)

    best: Pipeline = search.best_estimator_
    onnx_model = to_onnx(
        best,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(features)]))],
        options={id(best.steps[-1][1]): {"zipmap": False}} if task == "classification" else None,
        target_opset=17,
    )
    onnx_bytes = onnx_model.SerializeToString()
    x_holdout = holdout_rows[features].to_numpy(dtype=np.float32)
    check_parity(best, onnx_bytes, x_holdout, task)

    y_holdout = holdout_rows[target].to_numpy()
    holdout_score = float(
        best.score(x_holdout, y_holdout.astype(np.int64) if task == "classification" else y_holdout)
    )
    metric = "accuracy" if task == "classification" else "r2"
    return TrainingResult(
        onnx_bytes=onnx_bytes,
        params={k: str(v) for k, v in search.best_params_.items()},
        metrics={f"cv_{metric}": float(search.best_score_), f"holdout_{metric}": holdout_score},
        trials=trials,
        train_seconds=time.perf_counter() - started,
    )


def check_parity(pipeline: Pipeline, onnx_bytes: bytes, rows: np.ndarray, task: Task) -> None:
    """ONNX must give the same labels on every row, and probabilities or values within 1e-4."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {INPUT_NAME: rows})
    if task == "classification":
        labels, probabilities = outputs[0], outputs[1]
        expected_labels = pipeline.predict(rows)
        disagree = int(np.sum(labels != expected_labels))
        if disagree:
            raise FailedPrecondition(f"ONNX parity failed: {disagree} of {len(rows)} labels differ")
        gap = float(np.max(np.abs(probabilities - pipeline.predict_proba(rows))))
    else:
        gap = float(np.max(np.abs(outputs[0].ravel() - pipeline.predict(rows))))
    if gap > PROBABILITY_TOLERANCE:
        raise FailedPrecondition(
            f"ONNX parity failed: max difference {gap:.2e} exceeds {PROBABILITY_TOLERANCE}"
        )
