"""Drift statistics: pure functions over feature matrices (rows x features), with Evidently's defaults.

Which test a column gets (Evidently's `get_default_stattest`; `n` = unique values of reference and
current together):

| reference rows | column | test | drifts when |
|---|---|---|---|
| ≤ 1000 | numeric, n > 5 | two-sample Kolmogorov-Smirnov (`ks`) | p < 0.05 |
| ≤ 1000 | categorical or numeric with n ≤ 5, n > 2 | chi-squared (`chisquare`) | p < 0.05 |
| ≤ 1000 | categorical or numeric with n ≤ 2 | two-proportion Z-test (`z`) | p < 0.05 |
| > 1000 | numeric, n > 5 | Wasserstein distance / reference std (`wasserstein`) | ≥ 0.1 |
| > 1000 | categorical or numeric with n ≤ 5 | Jensen-Shannon distance (`jensenshannon`) | ≥ 0.1 |

`psi` (population stability index, ≥ 0.1) can be chosen per column, like any other test. The
dataset drifts when at least half of its columns drift.

The reference is prepared once (`PreparedReference`: each column sorted, its std and its distinct
values counted), so a window costs one sort of the window's columns plus searches into the
reference, never a pass over the reference again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from scipy.spatial import distance

__all__ = [
    "CATEGORICAL",
    "DATASET_DRIFT_SHARE",
    "DEFAULT_THRESHOLDS",
    "KS_TEST",
    "LARGE_REFERENCE_ROWS",
    "NUMERIC",
    "P_VALUE_TESTS",
    "TESTS",
    "ColumnReference",
    "FeatureDrift",
    "PreparedReference",
    "column_drift",
    "dataset_drifted",
    "default_test",
    "feature_drift",
    "ks_test",
]

KS_TEST = "ks"
CHISQUARE_TEST = "chisquare"
Z_TEST = "z"
WASSERSTEIN_TEST = "wasserstein"
JENSENSHANNON_TEST = "jensenshannon"
PSI_TEST = "psi"
TESTS = (KS_TEST, CHISQUARE_TEST, Z_TEST, WASSERSTEIN_TEST, JENSENSHANNON_TEST, PSI_TEST)
P_VALUE_TESTS = frozenset({KS_TEST, CHISQUARE_TEST, Z_TEST})
DEFAULT_THRESHOLDS = {
    KS_TEST: 0.05,
    CHISQUARE_TEST: 0.05,
    Z_TEST: 0.05,
    WASSERSTEIN_TEST: 0.1,
    JENSENSHANNON_TEST: 0.1,
    PSI_TEST: 0.1,
}
NUMERIC = "numeric"
CATEGORICAL = "categorical"
LARGE_REFERENCE_ROWS = 1000  # above this, distances replace p-values
FEW_VALUES = 5  # a numeric column with at most this many distinct values is tested as categorical
DATASET_DRIFT_SHARE = 0.5
_SMALLEST_STD = 0.001  # Evidently's floor on the std that normalises the Wasserstein distance
_PSI_FLOOR = 0.0001  # empty bins get this share so PSI's logarithm stays finite (as Evidently)

Matrix = NDArray[np.float64]
Vector = NDArray[np.float64]


@dataclass(frozen=True)
class FeatureDrift:
    """One column's verdict. `statistic` is the test's own statistic (KS D, chi², z, or the
    distance); `p_value` is NaN for the distance tests, whose statistic is compared with `threshold`."""

    feature: str
    test: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool

    @property
    def score(self) -> float:
        """What is compared with the threshold (Evidently's `drift_score`)."""
        return self.p_value if self.test in P_VALUE_TESTS else self.statistic


@dataclass(frozen=True)
class ColumnReference:
    """One reference column, prepared once: sorted values, std, distinct values and their counts."""

    name: str
    kind: str
    sorted_values: Vector
    std: float
    values: Vector  # distinct values, ascending
    counts: NDArray[np.int64]

    @classmethod
    def of(cls, name: str, column: Vector, kind: str = NUMERIC) -> ColumnReference:
        if kind not in (NUMERIC, CATEGORICAL):
            raise ValueError(f"column {name!r}: kind must be {NUMERIC!r} or {CATEGORICAL!r}, not {kind!r}")
        ordered = np.sort(np.asarray(column, dtype=np.float64))
        values, counts = np.unique(ordered, return_counts=True)
        return cls(name, kind, ordered, float(np.std(ordered)), values, counts.astype(np.int64))

    @property
    def rows(self) -> int:
        return len(self.sorted_values)


@dataclass(frozen=True)
class PreparedReference:
    columns: tuple[ColumnReference, ...]

    @classmethod
    def of(
        cls, rows: Matrix, features: Sequence[str], kinds: Mapping[str, str] | None = None
    ) -> PreparedReference:
        if rows.ndim != 2 or rows.shape[1] != len(features):
            raise ValueError(f"{len(features)} feature names for a reference of shape {rows.shape}")
        if not len(rows):
            raise ValueError("a reference needs at least one row")
        kinds = kinds or {}
        return cls(
            tuple(
                ColumnReference.of(name, rows[:, index], kinds.get(name, NUMERIC))
                for index, name in enumerate(features)
            )
        )

    @property
    def features(self) -> list[str]:
        return [column.name for column in self.columns]


def default_test(reference: ColumnReference, current: Vector) -> str:
    """Evidently's choice of test for a column (see the module's table)."""
    distinct = len(reference.values)
    if distinct <= FEW_VALUES:  # only then can the union stay small: count it
        distinct = len(np.union1d(reference.values, np.unique(current)))
    few = reference.kind == CATEGORICAL or distinct <= FEW_VALUES
    if reference.rows <= LARGE_REFERENCE_ROWS:
        if few:
            return CHISQUARE_TEST if distinct > 2 else Z_TEST
        return KS_TEST
    return JENSENSHANNON_TEST if few else WASSERSTEIN_TEST


def column_drift(
    reference: ColumnReference, current: Vector, test: str | None = None, threshold: float | None = None
) -> FeatureDrift:
    """Test one window column against its prepared reference column."""
    test = test or default_test(reference, current)
    if test not in DEFAULT_THRESHOLDS:
        raise ValueError(f"unknown drift test {test!r}; known: {', '.join(TESTS)}")
    limit = DEFAULT_THRESHOLDS[test] if threshold is None else threshold
    current = np.asarray(current, dtype=np.float64)
    if not len(current):
        raise ValueError("drift needs at least one current row")
    p_value = math.nan
    if test == KS_TEST:
        result = stats.ks_2samp(reference.sorted_values, current)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    elif test == CHISQUARE_TEST:
        statistic, p_value = _chisquare(reference, current)
    elif test == Z_TEST:
        statistic, p_value = _z_test(reference, current)
    elif test == WASSERSTEIN_TEST:
        statistic = _wasserstein(reference.sorted_values, np.sort(current)) / max(
            reference.std, _SMALLEST_STD
        )
    else:
        reference_share, current_share = _binned_shares(reference, current, fill_zeroes=test == PSI_TEST)
        if test == JENSENSHANNON_TEST:
            statistic = float(distance.jensenshannon(reference_share, current_share))
        else:
            statistic = float(
                np.sum((reference_share - current_share) * np.log(reference_share / current_share))
            )
    drifted = p_value < limit if test in P_VALUE_TESTS else statistic >= limit
    return FeatureDrift(reference.name, test, float(statistic), float(p_value), float(limit), bool(drifted))


def feature_drift(
    current: Matrix,
    reference: PreparedReference | Matrix,
    features: Sequence[str] | None = None,
    tests: Mapping[str, str] | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> list[FeatureDrift]:
    """Every column of `current` against the same column of the reference. `tests` chooses a test
    per feature (else Evidently's default); `thresholds` overrides a test's threshold by test name."""
    if not isinstance(reference, PreparedReference):
        if features is None:
            raise ValueError("feature names are needed with a raw reference matrix")
        reference = PreparedReference.of(reference, features)
    if current.ndim != 2 or current.shape[1] != len(reference.columns):
        raise ValueError(
            f"{len(reference.columns)} reference features for current rows of shape {current.shape}"
        )
    tests, thresholds = tests or {}, thresholds or {}
    results = []
    for index, column in enumerate(reference.columns):
        test = tests.get(column.name)
        threshold = thresholds.get(test) if test else None
        if test is None:
            test = default_test(column, current[:, index])
            threshold = thresholds.get(test)
        results.append(column_drift(column, current[:, index], test, threshold))
    return results


def ks_test(current: Matrix, reference: Matrix) -> tuple[Matrix, Matrix]:
    """The KS statistic and p-value of every column of `current` against the same column of `reference`."""
    if current.ndim != 2 or reference.ndim != 2 or current.shape[1] != reference.shape[1]:
        raise ValueError("KS compares two 2-D matrices with the same features")
    if not (len(current) and len(reference)):
        raise ValueError("drift needs at least one row on each side")
    result = stats.ks_2samp(current, reference, axis=0)
    return np.atleast_1d(result.statistic).astype(np.float64), np.atleast_1d(result.pvalue).astype(np.float64)


def dataset_drifted(drifted: Sequence[bool] | NDArray[np.bool_], share: float = DATASET_DRIFT_SHARE) -> bool:
    """Whether at least `share` of the features drifted; no features means no drift."""
    flags = np.asarray(drifted, dtype=bool)
    return bool(flags.size) and bool(flags.mean() >= share)


# -- the tests --------------------------------------------------------------------------------------
def _category_counts(reference: ColumnReference, current: Vector) -> tuple[Vector, Vector]:
    """Counts of every value seen on either side, reference and current, aligned on the same keys."""
    current_values, current_counts = np.unique(current, return_counts=True)
    keys = np.union1d(reference.values, current_values)
    reference_counts = np.zeros(len(keys))
    reference_counts[np.searchsorted(keys, reference.values)] = reference.counts
    counts = np.zeros(len(keys))
    counts[np.searchsorted(keys, current_values)] = current_counts
    return reference_counts, counts


def _chisquare(reference: ColumnReference, current: Vector) -> tuple[float, float]:
    reference_counts, counts = _category_counts(reference, current)
    expected = reference_counts * (len(current) / reference.rows)
    if np.any(expected == 0):  # a value the reference never had: infinitely unlikely under it
        return math.inf, 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = float(np.sum((counts - expected) ** 2 / expected))
    return statistic, float(stats.chi2.sf(statistic, len(expected) - 1))


def _z_test(reference: ColumnReference, current: Vector) -> tuple[float, float]:
    """Two-proportion Z-test (binary columns) on the share of rows other than the smallest value."""
    reference_counts, counts = _category_counts(reference, current)
    if len(reference_counts) == 1:  # one value on both sides: identical
        return 0.0, 1.0
    n1, n2 = reference.rows, len(current)
    p1, p2 = 1 - reference_counts[0] / n1, 1 - counts[0] / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return 0.0, 1.0
    z = (p1 - p2) / spread
    return float(z), float(2 * stats.norm.sf(abs(z)))


def _wasserstein(reference_sorted: Vector, current_sorted: Vector) -> float:
    """First Wasserstein distance of two sorted samples: the area between their empirical CDFs."""
    merged = np.sort(np.concatenate([reference_sorted, current_sorted]), kind="mergesort")
    widths = np.diff(merged)
    points = merged[:-1]
    reference_cdf = np.searchsorted(reference_sorted, points, "right") / len(reference_sorted)
    current_cdf = np.searchsorted(current_sorted, points, "right") / len(current_sorted)
    return float(np.sum(np.abs(reference_cdf - current_cdf) * widths))


def _binned_shares(reference: ColumnReference, current: Vector, fill_zeroes: bool) -> tuple[Vector, Vector]:
    """Evidently's binning: Sturges bins over both samples for a numeric column of more than 20
    distinct reference values; one bin per value otherwise. PSI fills empty bins."""
    if reference.kind == NUMERIC and len(reference.values) > 20:
        edges = np.histogram_bin_edges(np.concatenate([reference.sorted_values, current]), bins="sturges")
        reference_share = _histogram(reference.sorted_values, edges) / reference.rows
        current_share = np.histogram(current, edges)[0] / len(current)
    else:
        reference_counts, counts = _category_counts(reference, current)
        reference_share, current_share = reference_counts / reference.rows, counts / len(current)
    if fill_zeroes:
        reference_share, current_share = _fill_zeroes(reference_share), _fill_zeroes(current_share)
    return reference_share.astype(np.float64), current_share.astype(np.float64)


def _histogram(sorted_values: Vector, edges: Vector) -> Vector:
    """np.histogram of already sorted values by binary search: bins are [a, b), the last [a, b]."""
    positions = np.searchsorted(sorted_values, edges, "left")
    positions[-1] = np.searchsorted(sorted_values, edges[-1], "right")
    return np.diff(positions).astype(np.float64)


def _fill_zeroes(shares: Vector) -> Vector:
    filled = shares.copy()
    nonzero = filled[filled != 0]
    smallest = float(nonzero.min()) if len(nonzero) else _PSI_FLOOR
    filled[filled == 0] = smallest / 10**6 if smallest <= _PSI_FLOOR else _PSI_FLOOR
    return filled
