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

Like with like: serving feeds the model float32 (ONNX's input type) and logs those values, while
the training data is float64. Compared as they are, a tied value such as diabetes' `s4` 0.0343088
is two different numbers on the two sides (KS p ~ 1e-8 on unshifted rows) and the two values of
`sex` become four categories (chi-squared = inf). So the reference goes through the model's input
type once, where it is prepared (`PreparedReference.of(..., input_dtype="float32")`, the default),
and every window goes through the same type before it is compared: categories then match exactly.

Two modes (`evaluate`):

- "evidently": the tests and thresholds above, one verdict per feature, dataset drift when half of
  them drift. Compatible with Evidently's defaults (tests/monitor/test_evidently_parity.py), but
  its thresholds ignore the window size (Wasserstein/std >= 0.1 flags unshifted 200-row windows)
  and 30 features at p < 0.05 flag 1.5 of them per window by chance.
- "calibrated" (the default): one two-sample test per feature whose null distribution is known for
  any window size, the reference's own sampling noise counted (Kolmogorov-Smirnov for numeric
  columns; Pearson's chi-squared on the 2 x K table for categorical and few-valued ones, rare
  categories pooled), and a per-report false-alarm rate for the *decision*: a feature drifts when
  its p-value is below false_alarm_rate / features (Bonferroni: valid whatever the features'
  correlation), and the report drifts when any feature does. `calibrate` checks this on the
  reference itself, as NannyML does: for each of `draws` draws it splits the reference in two
  random halves, draws a window of the monitor's size from one half (bootstrap) and compares it
  with the other half, so the draws carry the sampling noise of a reference as well as that of a
  window of new data. A feature whose p-values come out below 5% or 10% more often than that on
  those draws (sparse categories, heavy ties stressing an asymptotic law) gets its p-values
  inflated by the measured factor; never deflated,
  so a calibration can only make a feature more cautious than its textbook law. The per-feature
  thresholds are reported in the statistic's own units (KS D, chi-squared) for the window size.

What a report shows of a column (`distribution`): its reference and window shares on the bins its
test counts in: the pooled categories of the calibrated chi-squared, every value seen for
chi-squared and Z, Evidently's bins for Jensen-Shannon and PSI (`_binning`, the same function the
statistic uses). The CDF tests (KS, Wasserstein) have no bins; their columns are shown on
Evidently's bins too. At most `MAX_BINS` bins, so a report stays small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from scipy.spatial import distance

__all__ = [
    "CALIBRATED_CHISQUARE_TEST",
    "CALIBRATED_KS_TEST",
    "CATEGORICAL",
    "DATASET_DRIFT_SHARE",
    "DEFAULT_THRESHOLDS",
    "KS_TEST",
    "LARGE_REFERENCE_ROWS",
    "MAX_BINS",
    "NUMERIC",
    "ONNX_INPUT_DTYPE",
    "P_VALUE_TESTS",
    "TESTS",
    "Calibration",
    "ColumnReference",
    "Distribution",
    "FeatureDrift",
    "PreparedReference",
    "WindowVerdict",
    "calibrate",
    "column_drift",
    "dataset_drifted",
    "default_test",
    "distribution",
    "evaluate",
    "feature_drift",
    "ks_test",
    "through_dtype",
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
# The calibrated mode's tests: their statistic is what is compared with the threshold.
CALIBRATED_KS_TEST = "ks_calibrated"
CALIBRATED_CHISQUARE_TEST = "chisquare_calibrated"
_SMALLEST_EXPECTED = 5.0  # categories expected fewer times than this in a window are pooled
_CHECKED_LEVELS = (0.05, 0.1)  # the levels at which `calibrate` compares p-values with uniform
_SMALLEST_CALIBRATION_REFERENCE = 20  # rows; each half must be a sample, not a handful
ONNX_INPUT_DTYPE = "float32"
MAX_BINS = 50  # a distribution's bins in a report: the rarest categories beyond it are pooled
OTHER = "other"  # the category of pooled rare values, and of values the reference never had

Matrix = NDArray[np.float64]
Vector = NDArray[np.float64]


@dataclass(frozen=True)
class Distribution:
    """A column's reference and window on one binning: the share of each side's rows in each bin.
    Numeric bins are [edge i, edge i+1) (the last one closed), so `edges` has one more entry than
    the shares; categorical ones are named in `categories` (values as text, and OTHER)."""

    reference: tuple[float, ...]
    window: tuple[float, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeatureDrift:
    """One column's verdict. `statistic` is the test's own statistic (KS D, chi², z, or the
    distance); `p_value` is NaN for the distance tests, whose statistic is compared with `threshold`.
    `distribution`, when attached (`distribution`), is what a person looks at beside the number."""

    feature: str
    test: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool
    distribution: Distribution | None = None

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
    input_dtype: str | None = None  # the numeric type both sides go through before a comparison

    @classmethod
    def of(
        cls, name: str, column: Vector, kind: str = NUMERIC, input_dtype: str | None = None
    ) -> ColumnReference:
        if kind not in (NUMERIC, CATEGORICAL):
            raise ValueError(f"column {name!r}: kind must be {NUMERIC!r} or {CATEGORICAL!r}, not {kind!r}")
        ordered = np.sort(through_dtype(column, input_dtype))
        values, counts = np.unique(ordered, return_counts=True)
        return cls(name, kind, ordered, float(np.std(ordered)), values, counts.astype(np.int64), input_dtype)

    @property
    def rows(self) -> int:
        return len(self.sorted_values)

    @property
    def few_valued(self) -> bool:
        """Compared as categories in the calibrated mode: declared categorical, or few values."""
        return self.kind == CATEGORICAL or len(self.values) <= FEW_VALUES

    def comparable(self, current: Vector) -> Vector:
        """`current` through the same numeric type as the reference, as float64."""
        return through_dtype(current, self.input_dtype)


def through_dtype(values: Any, dtype: str | None) -> Vector:
    """`values` as float64 after a round trip through `dtype` (None: as they are)."""
    array = np.asarray(values, dtype=np.float64)
    return array if dtype is None else array.astype(dtype).astype(np.float64)


@dataclass(frozen=True)
class PreparedReference:
    columns: tuple[ColumnReference, ...]
    rows: Matrix | None = None  # the reference's rows after the input type (for `calibrate`)

    @classmethod
    def of(
        cls,
        rows: Matrix,
        features: Sequence[str],
        kinds: Mapping[str, str] | None = None,
        input_dtype: str | None = ONNX_INPUT_DTYPE,
    ) -> PreparedReference:
        """The reference of a model's inputs, through the model's input type (`input_dtype`; ONNX
        models take float32) so it is compared like with like with the inputs serving logs. None
        keeps the values as they are (Evidently's comparisons of float64 data)."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != len(features):
            raise ValueError(f"{len(features)} feature names for a reference of shape {rows.shape}")
        if not len(rows):
            raise ValueError("a reference needs at least one row")
        kinds = kinds or {}
        cast = through_dtype(rows, input_dtype)
        return cls(
            tuple(
                ColumnReference.of(name, cast[:, index], kinds.get(name, NUMERIC), input_dtype)
                for index, name in enumerate(features)
            ),
            cast,
        )

    @property
    def features(self) -> list[str]:
        return [column.name for column in self.columns]


def default_test(reference: ColumnReference, current: Vector) -> str:
    """Evidently's choice of test for a column (see the module's table)."""
    distinct = len(reference.values)
    if distinct <= FEW_VALUES:  # only then can the union stay small: count it
        distinct = len(np.union1d(reference.values, np.unique(reference.comparable(current))))
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
    current = reference.comparable(current)
    test = test or default_test(reference, current)
    if test not in DEFAULT_THRESHOLDS:
        raise ValueError(f"unknown drift test {test!r}; known: {', '.join(TESTS)}")
    limit = DEFAULT_THRESHOLDS[test] if threshold is None else threshold
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


# -- the calibrated mode ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Per-feature drift thresholds for one reference and one window size, set on the reference itself.

    The rule: a feature drifts when its calibrated p-value (its test's p-value times its
    `inflation`) is below `feature_false_alarm_rate`, i.e. when its statistic exceeds its threshold;
    the report drifts when any feature does. With `feature_false_alarm_rate` = false_alarm_rate /
    features the decision's false-alarm rate per report is at most false_alarm_rate."""

    window_size: int
    false_alarm_rate: float  # per report, for the dataset-level decision
    thresholds: dict[str, float]  # per feature: the statistic above which it drifts, at window_size
    feature_false_alarm_rate: float  # the per-feature p-value cut (Bonferroni)
    inflation: dict[str, float]  # per feature, >= 1: how much smaller than uniform its draws' p-values were
    draws: int
    draw_false_alarm_rate: float  # the share of the draws on which the decision said "drifted"
    holdout_rows: int  # the half of the reference the draws were compared with


@dataclass(frozen=True)
class WindowVerdict:
    features: list[FeatureDrift]  # each with its statistic and the threshold it was compared with
    drifted: bool  # the dataset-level decision
    summary: str


def calibrate(
    reference: PreparedReference,
    window_size: int,
    *,
    false_alarm_rate: float = 0.01,
    draws: int = 200,
    seed: int = 0,
) -> Calibration:
    """Thresholds for windows of `window_size` rows against `reference` (see the module's doc). CPU
    work, proportional to draws x features x (window_size + reference rows): run it in a thread."""
    if window_size < 1:
        raise ValueError(f"a window has at least one row, not {window_size}")
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"the false-alarm rate is a probability in (0, 1), not {false_alarm_rate}")
    if draws < 1:
        raise ValueError(f"calibration needs at least one draw, not {draws}")
    rows = reference.rows
    if rows is None or len(rows) < _SMALLEST_CALIBRATION_REFERENCE:
        raise ValueError(
            f"calibration needs the reference's rows, at least {_SMALLEST_CALIBRATION_REFERENCE} of them"
        )
    rng = np.random.default_rng(seed)
    half = len(rows) // 2
    # A window drawn from one half strays from the truth by that half's noise as well as its own.
    extra_spread = 1 / half
    p_values = np.empty((draws, len(reference.columns)))
    for draw in range(draws):
        # A new split every draw: one fixed split would make every draw share one chance gap
        # between the halves, and their p-values would measure that gap, not the test's law.
        order = rng.permutation(len(rows))
        drawn_half, held_out = rows[order[:half]], rows[order[half:]]
        window = drawn_half[rng.integers(0, half, window_size)]
        held_sorted = np.sort(held_out, axis=0)  # already through the input type
        for index, column in enumerate(reference.columns):
            held = _held_column(column, held_sorted[:, index])
            p_values[draw, index] = _calibrated_test(held, window[:, index], extra_spread)[2]
    levels = np.asarray(_CHECKED_LEVELS)
    observed = (p_values[:, :, None] < levels).mean(axis=0) / levels  # draws below each level / level
    inflation = np.maximum(1.0, observed.max(axis=1))
    feature_rate = false_alarm_rate / len(reference.columns)
    flagged = (np.minimum(p_values * inflation, 1.0) < feature_rate).any(axis=1)
    factors = {
        column.name: float(factor) for column, factor in zip(reference.columns, inflation, strict=True)
    }
    thresholds = {
        column.name: _threshold(column, window_size, feature_rate / factors[column.name])
        for column in reference.columns
    }
    return Calibration(
        window_size=window_size,
        false_alarm_rate=false_alarm_rate,
        thresholds=thresholds,
        feature_false_alarm_rate=feature_rate,
        inflation=factors,
        draws=draws,
        draw_false_alarm_rate=float(flagged.mean()),
        holdout_rows=len(rows) - half,
    )


def evaluate(
    reference: PreparedReference,
    calibration: Calibration,
    current: Matrix,
    *,
    mode: Literal["calibrated", "evidently"] = "calibrated",
) -> WindowVerdict:
    """The verdict on one window. "calibrated": `calibration`'s rule, with the thresholds of the
    window's actual size (a window smaller than the calibrated one gets thresholds for its own
    size); "evidently": Evidently's default tests and its half-the-features rule."""
    current = np.asarray(current, dtype=np.float64)
    if current.ndim != 2 or current.shape[1] != len(reference.columns):
        raise ValueError(
            f"{len(reference.columns)} reference features for current rows of shape {current.shape}"
        )
    if not len(current):
        raise ValueError("drift needs at least one current row")
    if not np.isfinite(current).all():
        raise ValueError("current rows must be finite: NaN or infinity in the window")
    if mode == "evidently":
        features = feature_drift(current, reference)
        drifted = dataset_drifted([feature.drifted for feature in features])
        rule = f"at least {DATASET_DRIFT_SHARE:.0%} of the features (Evidently's defaults)"
    elif mode == "calibrated":
        missing = [column.name for column in reference.columns if column.name not in calibration.inflation]
        if missing:
            raise ValueError(f"the calibration has no threshold for {', '.join(missing)}")
        features = [
            _calibrated_drift(column, current[:, index], calibration)
            for index, column in enumerate(reference.columns)
        ]
        drifted = any(feature.drifted for feature in features)
        rule = (
            f"any feature over its threshold; false alarms at most {calibration.false_alarm_rate:.2%} "
            "of reports"
        )
    else:
        raise ValueError(f"unknown drift mode {mode!r}: 'calibrated' or 'evidently'")
    names = [feature.feature for feature in features if feature.drifted]
    summary = (
        f"{len(names)} of {len(features)} features drifted over {len(current)} rows"
        + (f" ({', '.join(names)})" if names else "")
        + f"; dataset {'DRIFTED' if drifted else 'stable'} ({rule})"
    )
    return WindowVerdict(features, drifted, summary)


def _calibrated_drift(reference: ColumnReference, current: Vector, calibration: Calibration) -> FeatureDrift:
    current = reference.comparable(current)
    inflation = calibration.inflation[reference.name]
    test, statistic, p_value, freedom = _calibrated_test(reference, current)
    threshold = _threshold(reference, len(current), calibration.feature_false_alarm_rate / inflation, freedom)
    return FeatureDrift(
        reference.name,
        test,
        statistic,
        min(1.0, p_value * inflation),
        threshold,
        bool(statistic > threshold),
    )


def _held_column(column: ColumnReference, sorted_values: Vector) -> ColumnReference:
    """The held-out half of `column` as a reference column of the same kind: counted only when
    it is compared as categories (a numeric column's KS needs just the sorted values)."""
    if column.few_valued:
        values, counts = np.unique(sorted_values, return_counts=True)
        return ColumnReference(column.name, CATEGORICAL, sorted_values, math.nan, values, counts)
    return ColumnReference(
        column.name, NUMERIC, sorted_values, math.nan, sorted_values, np.empty(0, np.int64)
    )


def _spread(reference: ColumnReference, window_rows: int, extra_spread: float = 0.0) -> float:
    """The variance scale of a difference of shares between a window and the reference."""
    return 1 / window_rows + 1 / reference.rows + extra_spread


def _calibrated_test(
    reference: ColumnReference, current: Vector, extra_spread: float = 0.0
) -> tuple[str, float, float, int]:
    """(test, statistic, p-value, chi-squared's degrees of freedom or 0) of the calibrated mode's
    two-sample test. `extra_spread` adds the variance of a window drawn from a finite sample
    (calibration's draws)."""
    spread = _spread(reference, len(current), extra_spread)
    if reference.few_valued:
        reference_counts, counts = _pooled_counts(reference, current)
        pooled = (reference_counts + counts) / (reference.rows + len(current))
        present = pooled > 0
        difference = counts[present] / len(current) - reference_counts[present] / reference.rows
        statistic = float(np.sum(difference**2 / pooled[present]) / spread)
        freedom = int(present.sum()) - 1
        p_value = float(stats.chi2.sf(statistic, freedom)) if freedom > 0 else 1.0
        return CALIBRATED_CHISQUARE_TEST, statistic, p_value, freedom
    statistic = _ks_distance(reference.sorted_values, np.sort(current))
    return CALIBRATED_KS_TEST, statistic, float(stats.kstwobign.sf(statistic / math.sqrt(spread))), 0


def _threshold(
    reference: ColumnReference, window_rows: int, p_value: float, freedom: int | None = None
) -> float:
    """The statistic at which the calibrated test's p-value is `p_value`, for `window_rows` rows.
    Chi-squared's degrees of freedom come from the window's own table when known (a value the
    reference never had adds a category), else from the reference's categories alone."""
    if reference.few_valued:
        if freedom is None:
            keys = _pooled_keys(reference, window_rows)
            freedom = len(keys) - int(len(keys) == len(reference.values))  # the pooled rest counts too
        return float(stats.chi2.isf(p_value, freedom)) if freedom > 0 else math.inf
    return float(stats.kstwobign.isf(p_value) * math.sqrt(_spread(reference, window_rows)))


def _pooled_keys(reference: ColumnReference, window_rows: int) -> Vector:
    """The reference values common enough to be their own category in a window of this size; the
    rest, and any value the reference never had, share one more category."""
    expected = reference.counts * (min(window_rows, reference.rows) / reference.rows)
    return reference.values[expected >= _SMALLEST_EXPECTED]


def _pooled_counts(reference: ColumnReference, current: Vector) -> tuple[Vector, Vector]:
    """Reference and window counts per pooled category, the pooled "other" one last."""
    keys = _pooled_keys(reference, len(current))
    slots = len(keys) + 1

    def counts_of(values: Vector, weights: Vector | None) -> Vector:
        position = np.minimum(np.searchsorted(keys, values), len(keys) - 1) if len(keys) else None
        if position is None:
            return np.array([float(np.sum(weights) if weights is not None else len(values))])
        slot = np.where(keys[position] == values, position, len(keys))
        return np.bincount(slot, weights=weights, minlength=slots).astype(np.float64)

    return counts_of(reference.values, reference.counts.astype(np.float64)), counts_of(current, None)


def _ks_distance(reference_sorted: Vector, current_sorted: Vector) -> float:
    """The two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs. The window's
    CDF only steps at its own values, so the gap is largest at one of them or just before one:
    searches of the window's values into the reference, never a pass over the reference."""
    rows, reference_rows = len(current_sorted), len(reference_sorted)
    at = np.searchsorted(current_sorted, current_sorted, "right") / rows  # ties are one whole step
    before = np.searchsorted(current_sorted, current_sorted, "left") / rows
    reference_at = np.searchsorted(reference_sorted, current_sorted, "right") / reference_rows
    reference_before = np.searchsorted(reference_sorted, current_sorted, "left") / reference_rows
    return float(max(np.max(np.abs(reference_at - at)), np.max(np.abs(reference_before - before))))


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
    """Shares of each side on `_binning`'s bins. PSI fills empty bins."""
    _, _, reference_share, current_share = _binning(reference, current)
    if fill_zeroes:
        reference_share, current_share = _fill_zeroes(reference_share), _fill_zeroes(current_share)
    return reference_share.astype(np.float64), current_share.astype(np.float64)


def _binning(
    reference: ColumnReference, current: Vector
) -> tuple[Vector | None, Vector | None, Vector, Vector]:
    """Evidently's binning: Sturges bins over both samples for a numeric column of more than 20
    distinct reference values (edges, None, shares); one bin per value otherwise (None, values,
    shares)."""
    if reference.kind == NUMERIC and len(reference.values) > 20:
        edges = _sturges_edges(reference.sorted_values, current)
        reference_share = _histogram(reference.sorted_values, edges) / reference.rows
        current_share = np.histogram(current, edges)[0] / len(current)
        return edges, None, reference_share, current_share
    reference_counts, counts = _category_counts(reference, current)
    keys = np.union1d(reference.values, np.unique(current))
    return None, keys, reference_counts / reference.rows, counts / len(current)


def _sturges_edges(reference_sorted: Vector, current: Vector) -> Vector:
    """np.histogram_bin_edges(both samples together, bins="sturges"), from the reference's ends
    and sizes alone, never a pass over the reference; at most MAX_BINS bins (reached only past
    2**49 rows: Sturges grows with log2 of the rows)."""
    low = min(reference_sorted[0], current.min())
    high = max(reference_sorted[-1], current.max())
    width = (high - low) / (np.log2(len(reference_sorted) + len(current)) + 1.0)
    if low == high:  # numpy widens an empty range
        low, high = low - 0.5, high + 0.5
    bins = min(int(np.ceil((high - low) / width)) if width else 1, MAX_BINS)
    return np.linspace(low, high, bins + 1)


def distribution(reference: ColumnReference, current: Vector, test: str) -> Distribution:
    """The column's reference and window shares on the bins `test` counts in (see the module's doc)."""
    current = reference.comparable(current)
    if not len(current):
        raise ValueError("a distribution needs at least one current row")
    if test == CALIBRATED_CHISQUARE_TEST:
        keys = _pooled_keys(reference, len(current))
        reference_counts, counts = _pooled_counts(reference, current)
        names = [*(_category_name(key) for key in keys), OTHER]
        return _categorical(names, reference_counts / reference.rows, counts / len(current))
    if test in (CHISQUARE_TEST, Z_TEST):
        reference_counts, counts = _category_counts(reference, current)
        keys = np.union1d(reference.values, np.unique(current))
        return _categorical(
            [_category_name(key) for key in keys], reference_counts / reference.rows, counts / len(current)
        )
    edges, values, reference_share, current_share = _binning(reference, current)
    if edges is None:
        assert values is not None
        return _categorical([_category_name(key) for key in values], reference_share, current_share)
    return Distribution(
        reference=tuple(float(share) for share in reference_share),
        window=tuple(float(share) for share in current_share),
        edges=tuple(float(edge) for edge in edges),
    )


def _category_name(value: float) -> str:
    return f"{value:g}"


def _categorical(names: Sequence[str], reference_share: Vector, current_share: Vector) -> Distribution:
    """Categories seen on either side, in order; beyond MAX_BINS the rarest are pooled into OTHER."""
    seen = (reference_share > 0) | (current_share > 0)
    kept = [index for index in range(len(names)) if seen[index]]
    if len(kept) > MAX_BINS:
        weight = np.maximum(reference_share, current_share)
        common = sorted(sorted(kept, key=lambda index: -weight[index])[: MAX_BINS - 1])
        rest = sorted(set(kept) - set(common))
        pooled = [(OTHER, float(reference_share[rest].sum()), float(current_share[rest].sum()))]
        rows = [(names[i], float(reference_share[i]), float(current_share[i])) for i in common]
        merged: dict[str, tuple[float, float]] = {}
        for name, ref, cur in [*rows, *pooled]:  # an OTHER among `common` takes the rest in
            before = merged.get(name, (0.0, 0.0))
            merged[name] = (before[0] + ref, before[1] + cur)
        return Distribution(
            reference=tuple(share[0] for share in merged.values()),
            window=tuple(share[1] for share in merged.values()),
            categories=tuple(merged),
        )
    return Distribution(
        reference=tuple(float(reference_share[i]) for i in kept),
        window=tuple(float(current_share[i]) for i in kept),
        categories=tuple(names[i] for i in kept),
    )


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
