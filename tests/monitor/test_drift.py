from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from services.monitor.drift import KS_TEST, dataset_drifted, feature_drift, ks_test

FEATURES = ["a", "b", "c", "d", "e"]


def sample(rows: int, shifts: list[float], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=shifts, size=(rows, len(shifts)))


def test_same_distribution_does_not_drift() -> None:
    reference = sample(1000, [0.0] * 5, seed=1)
    current = sample(200, [0.0] * 5, seed=2)

    result = feature_drift(current, reference, FEATURES, p_value_threshold=0.05)

    assert [feature.feature for feature in result] == FEATURES
    assert not any(feature.drifted for feature in result)
    assert all(feature.p_value > 0.05 and feature.test == KS_TEST for feature in result)
    assert not dataset_drifted([feature.drifted for feature in result])


def test_a_shifted_mean_drifts_only_that_feature() -> None:
    reference = sample(1000, [0.0] * 5, seed=1)
    current = sample(200, [0.0, 1.0, 0.0, 0.0, 0.0], seed=2)

    result = feature_drift(current, reference, FEATURES, p_value_threshold=0.05)

    assert [feature.drifted for feature in result] == [False, True, False, False, False]
    shifted = result[1]
    assert shifted.p_value < 1e-6 and shifted.statistic > 0.3 and shifted.threshold == 0.05
    assert not dataset_drifted([feature.drifted for feature in result])


def test_most_features_shifted_drifts_the_dataset() -> None:
    reference = sample(1000, [0.0] * 5, seed=1)
    current = sample(200, [1.0, -1.0, 0.8, 0.0, 0.0], seed=2)

    result = feature_drift(current, reference, FEATURES, p_value_threshold=0.05)

    assert sum(feature.drifted for feature in result) == 3
    assert dataset_drifted([feature.drifted for feature in result])


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
        feature_drift(np.zeros((5, 2)), np.zeros((5, 2)), ["only one"], 0.05)
