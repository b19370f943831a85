from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from cascade.services.monitor.drift import (
    CATEGORICAL,
    KS_TEST,
    ColumnReference,
    PreparedReference,
    column_drift,
    dataset_drifted,
    default_test,
    feature_drift,
    ks_test,
)

FEATURES = ["a", "b", "c", "d", "e"]


def sample(rows: int, shifts: list[float], seed: int, scale: float = 1.0) -> np.ndarray:
    """Normal rows holding float32 values, as serving logs them (a prepared reference goes through
    float32 too, so scipy on these very values is the expected answer)."""
    rows_ = np.random.default_rng(seed).normal(loc=shifts, size=(rows, len(shifts))) * scale
    return rows_.astype(np.float32).astype(np.float64)


def test_same_distribution_does_not_drift() -> None:
    reference = sample(1000, [0.0] * 5, seed=1)
    current = sample(200, [0.0] * 5, seed=2)

    result = feature_drift(current, reference, FEATURES)

    assert [feature.feature for feature in result] == FEATURES
    assert not any(feature.drifted for feature in result)
    assert all(feature.p_value > 0.05 and feature.test == KS_TEST for feature in result)
    assert not dataset_drifted([feature.drifted for feature in result])


def test_a_shifted_mean_drifts_only_that_feature() -> None:
    reference = sample(1000, [0.0] * 5, seed=1)
    current = sample(200, [0.0, 1.0, 0.0, 0.0, 0.0], seed=2)

    result = feature_drift(current, reference, FEATURES)

    assert [feature.drifted for feature in result] == [False, True, False, False, False]
    shifted = result[1]
    assert shifted.p_value < 1e-6 and shifted.statistic > 0.3 and shifted.threshold == 0.05
    assert not dataset_drifted([feature.drifted for feature in result])


def test_most_features_shifted_drifts_the_dataset() -> None:
    reference = sample(1000, [0.0] * 5, seed=1)
    current = sample(200, [1.0, -1.0, 0.8, 0.0, 0.0], seed=2)

    result = feature_drift(current, reference, FEATURES)

    assert sum(feature.drifted for feature in result) == 3
    assert dataset_drifted([feature.drifted for feature in result])


def test_a_large_reference_switches_numeric_columns_to_the_normalised_wasserstein_distance() -> None:
    reference = sample(5000, [0.0] * 5, seed=1, scale=3.0)
    current = sample(5000, [0.0, 1.0, 0.0, 0.0, 0.0], seed=2, scale=3.0)  # a small window is noisy at 0.1

    result = feature_drift(current, reference, FEATURES)

    assert {feature.test for feature in result} == {"wasserstein"}
    assert [feature.drifted for feature in result] == [False, True, False, False, False]
    for index, feature in enumerate(result):
        column, window = reference[:, index], current[:, index]
        expected = stats.wasserstein_distance(column, window) / np.std(column)
        assert feature.statistic == pytest.approx(expected, rel=1e-9)
        assert feature.threshold == 0.1 and math.isnan(feature.p_value)


@pytest.mark.parametrize(
    ("reference_rows", "values", "kind", "expected"),
    [
        (1000, 50, "numeric", "ks"),
        (1000, 4, "numeric", "chisquare"),
        (1000, 2, "numeric", "z"),
        (1000, 30, CATEGORICAL, "chisquare"),
        (1000, 2, CATEGORICAL, "z"),
        (1001, 50, "numeric", "wasserstein"),
        (1001, 5, "numeric", "jensenshannon"),
        (1001, 30, CATEGORICAL, "jensenshannon"),
    ],
)
def test_evidently_default_test_choice(reference_rows: int, values: int, kind: str, expected: str) -> None:
    rng = np.random.default_rng(0)
    column = rng.integers(0, values, reference_rows).astype(float)
    reference = ColumnReference.of("x", column, kind)
    assert default_test(reference, rng.integers(0, values, 100).astype(float)) == expected


def test_values_only_in_the_window_count_towards_the_choice() -> None:
    reference = ColumnReference.of("x", np.array([0.0, 1.0] * 50))
    assert default_test(reference, np.array([0.0, 1.0])) == "z"
    assert default_test(reference, np.array([2.0, 3.0, 4.0])) == "chisquare"  # 5 values in all
    assert default_test(reference, np.array([2.0, 3.0, 4.0, 5.0])) == "ks"


def test_chisquare_and_jensenshannon_match_scipy_on_category_counts() -> None:
    rng = np.random.default_rng(1)
    reference_values = rng.choice(4, 2000, p=[0.4, 0.3, 0.2, 0.1]).astype(float)
    current = rng.choice(4, 500, p=[0.1, 0.2, 0.3, 0.4]).astype(float)
    reference = ColumnReference.of("c", reference_values, CATEGORICAL)
    reference_counts = np.bincount(reference_values.astype(int))
    current_counts = np.bincount(current.astype(int))

    chi = column_drift(reference, current, "chisquare")
    expected = stats.chisquare(current_counts, reference_counts * len(current) / len(reference_values))
    assert chi.statistic == pytest.approx(expected.statistic)
    assert chi.p_value == pytest.approx(expected.pvalue)
    assert chi.drifted

    js = column_drift(reference, current)
    assert js.test == "jensenshannon" and js.drifted
    assert js.statistic == pytest.approx(
        distance.jensenshannon(reference_counts / len(reference_values), current_counts / len(current))
    )


def test_a_test_and_a_threshold_can_be_chosen_per_feature() -> None:
    reference = sample(500, [0.0] * 5, seed=1)
    current = sample(200, [0.0, 0.3, 0.0, 0.0, 0.0], seed=2)
    prepared = PreparedReference.of(reference, FEATURES)

    tests = {"b": "psi", "c": "wasserstein"}
    result = feature_drift(current, prepared, tests=tests, thresholds={"psi": 0.01})

    assert [feature.test for feature in result] == ["ks", "psi", "wasserstein", "ks", "ks"]
    assert result[1].threshold == 0.01 and result[1].drifted
    with pytest.raises(ValueError, match="unknown drift test"):
        feature_drift(current, prepared, tests={"a": "anderson"})


def test_the_prepared_reference_gives_the_same_answers_as_the_raw_one() -> None:
    reference = sample(2000, [0.0] * 5, seed=1)
    current = sample(300, [0.5, 0.0, 0.0, 0.0, 0.0], seed=2)
    prepared = PreparedReference.of(reference, FEATURES)
    assert feature_drift(current, prepared) == feature_drift(current, reference, FEATURES)
    assert prepared.features == FEATURES


@pytest.mark.parametrize(
    ("drifted", "expected"),
    [
        ([True, False], True),  # exactly half is enough, as in Evidently
        ([True, True, False, False], True),
        ([True, False, False], False),
        ([False, False], False),
        ([True], True),
        ([], False),
    ],
)
def test_dataset_drifts_when_at_least_half_the_features_do(drifted: list[bool], expected: bool) -> None:
    assert dataset_drifted(drifted) is expected


def test_dataset_share_is_adjustable() -> None:
    assert not dataset_drifted([True, False, False, False], share=0.3)
    assert dataset_drifted([True, False, False], share=0.3)


def test_vectorised_test_matches_scipy_column_by_column() -> None:
    reference = sample(300, [0.0, 0.5, 0.0], seed=3)
    current = sample(80, [0.2, 0.0, 0.0], seed=4)

    statistics, p_values = ks_test(current, reference)

    for column in range(3):
        expected = stats.ks_2samp(current[:, column], reference[:, column])
        assert statistics[column] == pytest.approx(expected.statistic)
        assert p_values[column] == pytest.approx(expected.pvalue)


def test_matrices_must_be_comparable() -> None:
    with pytest.raises(ValueError, match="features"):
        ks_test(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="at least one row"):
        ks_test(np.zeros((0, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="names"):
        feature_drift(np.zeros((5, 2)), np.zeros((5, 2)), ["only one"])
