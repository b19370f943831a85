"""Every model family the trainer produces, built and exported exactly as it does
(cascade.services.trainer.training's build_pipeline and export_onnx), on scikit-learn's bundled
datasets: breast_cancer (binary, 30 features), wine (3 classes, 13), iris (3 classes, 4) and
diabetes (regression, 10). Tree sizes are drawn from the trainer's own search space (n_estimators 20
to 120, max_depth 2 to 12 for forests, 2 to 5 for boosting), kept small so the suite stays quick."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.pipeline import Pipeline

from cascade.services.trainer.training import build_pipeline, export_onnx
from cascade.training_spec import CLASSIFIERS, REGRESSORS, Task

DATASETS = {
    "breast_cancer": ("classification", load_breast_cancer),
    "wine": ("classification", load_wine),
    "iris": ("classification", load_iris),
    "diabetes": ("regression", load_diabetes),
}
PARAMS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 1.0},
    "ridge": {"alpha": 1.0},
    "linear_regression": {},
    "random_forest": {"n_estimators": 30, "max_depth": 6},
    "gradient_boosting": {"n_estimators": 40, "max_depth": 3},
    "xgboost": {"n_estimators": 30, "max_depth": 3},
    "lightgbm": {"n_estimators": 30, "num_leaves": 8},
}
EXPECTED_METHOD = {
    "logistic_regression": "linear",
    "ridge": "linear",
    "linear_regression": "linear",
    "random_forest": "tree",
    "gradient_boosting": "tree",
    "xgboost": "tree",
    "lightgbm": "tree",
}
BACKGROUND_ROWS = 60


@dataclass(frozen=True)
class Family:
    dataset: str
    estimator: str
    task: Task
    pipeline: Pipeline
    onnx: bytes
    background: np.ndarray  # float32, every 3rd training row (at most BACKGROUND_ROWS)
    rows: np.ndarray  # float32 rows to explain, none of them in the background

    @property
    def features(self) -> list[str]:
        return [f"f{i}" for i in range(self.rows.shape[1])]

    @property
    def model(self) -> Any:
        return self.pipeline.steps[-1][1]

    def scaled(self, rows: np.ndarray) -> np.ndarray:
        """Rows as the linear model inside the pipeline sees them (after its StandardScaler)."""
        return np.asarray(self.pipeline[:-1].transform(rows.astype(np.float64)))


def cases() -> list[tuple[str, str]]:
    """(dataset, estimator) for every family each task's trainer offers."""
    out = []
    for dataset, (task, _) in DATASETS.items():
        allowed = CLASSIFIERS if task == "classification" else REGRESSORS
        out += [(dataset, name) for name in sorted(allowed)]
    return out


@functools.cache
def family(dataset: str, estimator: str, params: tuple[tuple[str, Any], ...] | None = None) -> Family:
    task, load = DATASETS[dataset]
    x, y = load(return_X_y=True)
    x = x.astype(np.float32)
    pipeline = build_pipeline(estimator, task, dict(params) if params else PARAMS[estimator], 7)
    pipeline.fit(x, y)
    background = x[::3][:BACKGROUND_ROWS]
    rows = x[1::3][:25]
    return Family(
        dataset, estimator, task, pipeline, export_onnx(pipeline, x.shape[1], task), background, rows
    )
