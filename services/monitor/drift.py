"""Drift statistics: pure functions over feature matrices (rows x features), vectorised over features.

A feature drifts when the two-sample Kolmogorov-Smirnov test of the current window against the
reference has a p-value below the threshold; the dataset drifts when at least half of its features
drift. Both rules are Evidently's defaults for numerical data, so our verdicts read like theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

__all__ = ["DATASET_DRIFT_SHARE", "KS_TEST", "FeatureDrift", "dataset_drifted", "feature_drift", "ks_test"]

KS_TEST = "ks"
DATASET_DRIFT_SHARE = 0.5

Matrix = NDArray[np.float64]


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    test: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool


def ks_test(current: Matrix, reference: Matrix) -> tuple[Matrix, Matrix]:
    """The KS statistic and p-value of every column of `current` against the same column of `reference`."""
    _check_comparable(current, reference)
    # One call over axis 0 tests all columns; scipy picks the exact p-value for small samples.
    result = stats.ks_2samp(current, reference, axis=0)
    return np.atleast_1d(result.statistic).astype(np.float64), np.atleast_1d(result.pvalue).astype(np.float64)


def feature_drift(
    current: Matrix, reference: Matrix, features: Sequence[str], p_value_threshold: float
) -> list[FeatureDrift]:
    """Per feature: the KS test of `current` against `reference`, drifted when p < threshold."""
    if len(features) != current.shape[1]:
        raise ValueError(f"{len(features)} feature names for {current.shape[1]} columns")
    statistics, p_values = ks_test(current, reference)
    drifted = p_values < p_value_threshold
    return [
        FeatureDrift(name, KS_TEST, float(statistic), float(p_value), p_value_threshold, bool(flag))
        for name, statistic, p_value, flag in zip(features, statistics, p_values, drifted, strict=True)
    ]


def dataset_drifted(drifted: Sequence[bool] | NDArray[np.bool_], share: float = DATASET_DRIFT_SHARE) -> bool:
    """Whether at least `share` of the features drifted; no features means no drift."""
    flags = np.asarray(drifted, dtype=bool)
    return bool(flags.size) and bool(flags.mean() >= share)


def _check_comparable(current: Matrix, reference: Matrix) -> None:
    if current.ndim != 2 or reference.ndim != 2:
        raise ValueError("drift is measured between two 2-D matrices (rows x features)")
    if current.shape[1] != reference.shape[1]:
        raise ValueError(
            f"{current.shape[1]} current features against {reference.shape[1]} reference features"
        )
    if not (len(current) and len(reference)):
        raise ValueError("drift needs at least one row on each side")
