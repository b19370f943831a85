"""What to train, and how hard to search: one spec per dataset, with defaults good enough that a new
dataset trains with no spec at all. A contract between the trainer, which follows it, and whoever
writes it (the CLI, through the registry), so it lives beside the events rather than in a service."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Task = Literal["classification", "regression"]
Estimator = Literal[
    "logistic_regression",
    "random_forest",
    "gradient_boosting",
    "linear_regression",
    "ridge",
    "xgboost",
    "lightgbm",
]
Strategy = Literal["grid", "random", "bayesian"]

# Gradient boosting libraries outside scikit-learn, installed by the `import` extra: the trainer's
# default search tries them only where they are installed.
BOOSTING: frozenset[str] = frozenset({"xgboost", "lightgbm"})
CLASSIFIERS: frozenset[str] = frozenset(
    {"logistic_regression", "random_forest", "gradient_boosting", *BOOSTING}
)
REGRESSORS: frozenset[str] = frozenset(
    {"linear_regression", "ridge", "random_forest", "gradient_boosting", *BOOSTING}
)


class ParamRange(BaseModel):
    """A hyperparameter's range: numbers between low and high (log-scaled if asked), or choices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ParamRange:
        if self.choices is None and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError("a range needs low <= high, or choices")
        return self

    def grid(self, points: int = 3) -> list[str | int | float | bool]:
        """A few representative values, for grid search."""
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        import numpy as np

        values = (np.geomspace if self.log else np.linspace)(self.low, self.high, points)
        return sorted({round(float(v)) for v in values}) if self.integer else [float(v) for v in values]


def _float(low: float, high: float, log: bool = False) -> ParamRange:
    return ParamRange(low=low, high=high, log=log)


def _int(low: int, high: int) -> ParamRange:
    return ParamRange(low=low, high=high, integer=True)


DEFAULT_SPACES: dict[str, dict[str, ParamRange]] = {
    "logistic_regression": {"C": _float(1e-3, 1e2, log=True)},
    "ridge": {"alpha": _float(1e-3, 1e2, log=True)},
    "linear_regression": {},
    "random_forest": {
        "n_estimators": _int(20, 120),
        "max_depth": _int(2, 12),
        "min_samples_leaf": _int(1, 10),
    },
    "gradient_boosting": {
        "n_estimators": _int(20, 120),
        "learning_rate": _float(0.01, 0.3, log=True),
        "max_depth": _int(2, 5),
    },
    # Shallow, few trees and a floor on leaf weight / size: a small search on a small machine, and
    # data sets of a few hundred rows that deeper boosting would memorise.
    "xgboost": {
        "n_estimators": _int(20, 150),
        "learning_rate": _float(0.02, 0.3, log=True),
        "max_depth": _int(2, 6),
        "min_child_weight": _float(0.5, 10.0, log=True),
    },
    "lightgbm": {
        "n_estimators": _int(20, 150),
        "learning_rate": _float(0.02, 0.3, log=True),
        "num_leaves": _int(4, 31),
        "min_child_samples": _int(5, 40),
    },
}
# The boosting families among these are left out where their library is not installed.
DEFAULT_ESTIMATORS: dict[str, list[Estimator]] = {
    "classification": ["logistic_regression", "random_forest", "xgboost", "lightgbm"],
    "regression": ["ridge", "random_forest", "xgboost", "lightgbm"],
}
DEFAULT_METRIC: dict[str, str] = {"classification": "accuracy", "regression": "r2"}
METRICS: dict[str, frozenset[str]] = {
    "classification": frozenset({"accuracy", "balanced_accuracy", "f1_macro", "roc_auc"}),
    "regression": frozenset({"r2", "neg_root_mean_squared_error", "neg_mean_absolute_error"}),
}


class TrainingSpec(BaseModel):
    """How one dataset's models are trained. Every field has a default; `resolved(task)` fills the
    task-dependent ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Task | None = Field(None, description="Defaults to the dataset's task.")
    estimators: list[Estimator] | None = Field(None, description="Families to try; defaults per task.")
    search_space: dict[str, dict[str, ParamRange]] = Field(
        default_factory=dict, description="Per family, overrides of the default ranges."
    )
    strategy: Strategy = "bayesian"
    max_trials: int = Field(12, ge=1, le=1000)
    max_seconds: float = Field(120.0, gt=0)
    cv_folds: int = Field(3, ge=2, le=20)
    primary_metric: str | None = Field(None, description="Defaults to accuracy or r2.")
    window_batches: int | None = Field(
        None, ge=1, description="Train on the latest N batches; None: all data."
    )
    seed: int = 42
    holdout_fraction: float = Field(0.2, gt=0, lt=0.9)

    def resolved(self, task: Task) -> TrainingSpec:
        task = self.task or task
        estimators = self.estimators or DEFAULT_ESTIMATORS[task]
        allowed = CLASSIFIERS if task == "classification" else REGRESSORS
        unfit = [e for e in estimators if e not in allowed]
        if unfit:
            raise ValueError(f"estimators {unfit} do not do {task}")
        metric = self.primary_metric or DEFAULT_METRIC[task]
        if metric not in METRICS[task]:
            raise ValueError(f"metric {metric!r} is not one of {sorted(METRICS[task])} for {task}")
        spaces = {name: {**DEFAULT_SPACES[name], **self.search_space.get(name, {})} for name in estimators}
        return self.model_copy(
            update={"task": task, "estimators": estimators, "primary_metric": metric, "search_space": spaces}
        )

    def digest(self) -> str:
        """Identifies the spec: same data + same digest = same model."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]
