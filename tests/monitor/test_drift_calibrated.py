"""The calibrated drift decision on real data (sklearn's bundled diabetes and breast cancer sets),
tested as a decision: how often it fires on unshifted held-out rows, and whether it fires on shifts.

Windows of held-out rows go through float32 first, as serving logs them. Counting false alarms:
if the decision's rate per report is at most 1%, the count over 300 windows is Binomial(300, 0.01)
at worst (mean 3); 9 or more has probability 0.004, so `FALSE_ALARM_BOUND` = 8 rarely fails a
correct detector, and passes one with a 5% rate only 3% of the time. (The windows are subsets of one
held-out pool, so they are not independent; a pool unlike the reference would show up as many
alarms at once, which is exactly what the assertion should catch.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_breast_cancer, load_diabetes

from cascade.services.monitor.drift import (
    CALIBRATED_CHISQUARE_TEST,
    CALIBRATED_KS_TEST,
    CATEGORICAL,
    PreparedReference,
    calibrate,
    evaluate,
    feature_drift,
)

WINDOWS = 300
FALSE_ALARM_BOUND = 8  # see the module's doc: P(Binomial(300, 0.01) >= 9) = 0.004
REFERENCE_ROWS = 300

Loader = Callable[[], Any]
# Diabetes (ties, a binary feature) is fast; 30 continuous features cost a few seconds more.
LOADERS = [
    pytest.param(load_diabetes, id="diabetes"),
    pytest.param(load_breast_cancer, id="breast_cancer", marks=pytest.mark.slow),
]


def as_logged(rows: np.ndarray) -> np.ndarray:
    """Rows as the monitor receives them: float32 inputs of the ONNX model, read back as float64."""
    return rows.astype(np.float32).astype(np.float64)


def split(loader: Loader, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A random reference of REFERENCE_ROWS rows (float64, as trained on) and the held-out rest."""
    data = loader()
    order = np.random.default_rng(seed).permutation(len(data.data))
    names = [str(name) for name in data.feature_names]
    return data.data[order[:REFERENCE_ROWS]], data.data[order[REFERENCE_ROWS:]], names


def windows(pool: np.ndarray, size: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [as_logged(pool[rng.choice(len(pool), size, replace=False)]) for _ in range(count)]


def test_float32_inputs_compare_with_a_float64_reference_like_with_like() -> None:
    data = load_diabetes()
    names = list(data.feature_names)
    current = as_logged(data.data[:200])  # the model's own training rows, as serving logs them
    sex, s4 = names.index("sex"), names.index("s4")

    raw = feature_drift(current, PreparedReference.of(data.data, names, input_dtype=None))
    assert raw[sex].statistic == np.inf  # four "categories": the bug this fixes
    assert raw[s4].p_value < 1e-6

    prepared = PreparedReference.of(data.data, names)  # through float32, the ONNX input type
    fixed = feature_drift(current, prepared)
    assert fixed[sex].test == "z" and np.isfinite(fixed[sex].statistic) and fixed[sex].p_value > 0.05
    assert fixed[s4].test == "ks" and fixed[s4].p_value > 0.05
    assert list(prepared.columns[sex].values) == sorted(set(current[:, sex]))  # the same two values

    calibrated = evaluate(prepared, calibrate(prepared, 200), current)
    assert not calibrated.drifted
    assert calibrated.features[sex].test == CALIBRATED_CHISQUARE_TEST
    assert calibrated.features[s4].test == CALIBRATED_KS_TEST


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("window_size", [50, 100])
def test_unshifted_held_out_rows_raise_few_false_alarms(loader: Loader, window_size: int) -> None:
    reference, held_out, names = split(loader)
    prepared = PreparedReference.of(reference, names)
    calibration = calibrate(prepared, window_size)

    alarms = sum(
        evaluate(prepared, calibration, window).drifted
        for window in windows(held_out, window_size, WINDOWS, seed=1)
    )

    assert alarms <= FALSE_ALARM_BOUND
    assert calibration.draw_false_alarm_rate <= 0.02  # the rule, checked on its own draws


@pytest.mark.parametrize("loader", LOADERS)
def test_a_half_std_shift_in_three_features_is_detected(loader: Loader) -> None:
    reference, held_out, names = split(loader)
    prepared = PreparedReference.of(reference, names)
    calibration = calibrate(prepared, 100)
    moved = [2, 3, 8]  # diabetes: bmi, bp, s5; breast cancer: mean perimeter, mean area, mean symmetry
    shift = 0.5 * reference[:, moved].std(axis=0)

    verdicts = []
    for window in windows(held_out, 100, 100, seed=2):
        window[:, moved] += shift
        verdicts.append(evaluate(prepared, calibration, as_logged(window)))

    assert sum(verdict.drifted for verdict in verdicts) >= 95
    flagged = {feature.feature for verdict in verdicts for feature in verdict.features if feature.drifted}
    assert flagged <= {names[index] for index in moved}  # no innocent feature blamed along the way


def test_a_change_in_the_mix_of_a_binary_feature_is_detected() -> None:
    reference, held_out, names = split(load_diabetes)
    prepared = PreparedReference.of(reference, names)
    calibration = calibrate(prepared, 140)
    sex = names.index("sex")
    low, high = np.unique(reference[:, sex])
    window = held_out[:140].copy()
    window[:, sex] = np.where(np.arange(140) < 105, high, low)  # 75% one value, about 47% in the reference

    verdict = evaluate(prepared, calibration, as_logged(window))

    assert verdict.drifted
    assert [feature.feature for feature in verdict.features if feature.drifted] == ["sex"]
    assert "sex" in verdict.summary and "DRIFTED" in verdict.summary


@pytest.mark.slow
def test_reports_show_the_statistic_and_a_threshold_that_knows_the_window_size() -> None:
    reference, held_out, names = split(load_breast_cancer)
    prepared = PreparedReference.of(reference, names)
    small, large = calibrate(prepared, 50), calibrate(prepared, 250)

    assert all(large.thresholds[name] < small.thresholds[name] for name in names)
    verdict = evaluate(prepared, small, as_logged(held_out[:50]))
    for feature in verdict.features:
        assert feature.threshold == pytest.approx(small.thresholds[feature.feature])
        assert feature.drifted == (feature.statistic > feature.threshold)
        assert feature.score == feature.statistic
    shorter = evaluate(prepared, large, as_logged(held_out[:50]))  # a window not yet full
    same_inflation = [f for f in shorter.features if small.inflation[f.feature] == large.inflation[f.feature]]
    assert len(same_inflation) >= len(names) // 2
    for feature in same_inflation:  # the thresholds of a 50-row window, not those of 250 rows
        assert feature.threshold == pytest.approx(small.thresholds[feature.feature])


def test_a_large_reference_and_small_windows_no_longer_flag_unshifted_features() -> None:
    """Evidently's rule for a reference over 1000 rows (Wasserstein / std >= 0.1) ignores the window
    size: unshifted 200-row windows get features flagged. The calibrated thresholds do not."""
    data = load_breast_cancer()
    names = [str(name) for name in data.feature_names]
    rng = np.random.default_rng(3)
    resampled = data.data[rng.integers(0, len(data.data), 6000)]
    population = resampled + rng.normal(scale=0.05 * data.data.std(axis=0), size=resampled.shape)
    prepared = PreparedReference.of(population[:4000], names)
    calibration = calibrate(prepared, 200, draws=100)

    evidently_flags = calibrated_flags = calibrated_alarms = 0
    for window in windows(population[4000:], 200, 20, seed=4):
        evidently_flags += sum(
            f.drifted for f in evaluate(prepared, calibration, window, mode="evidently").features
        )
        verdict = evaluate(prepared, calibration, window)
        calibrated_flags += sum(feature.drifted for feature in verdict.features)
        calibrated_alarms += verdict.drifted

    assert evidently_flags >= 20  # more than one innocent feature per window
    assert calibrated_flags <= 1 and calibrated_alarms <= 1


def test_bad_calls_are_refused_with_a_reason() -> None:
    reference, _, names = split(load_diabetes)
    prepared = PreparedReference.of(reference, names)
    calibration = calibrate(prepared, 50, draws=10)

    with pytest.raises(ValueError, match="shape"):
        evaluate(prepared, calibration, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="at least one current row"):
        evaluate(prepared, calibration, np.zeros((0, len(names))))
    with pytest.raises(ValueError, match="finite"):
        evaluate(prepared, calibration, np.full((5, len(names)), np.nan))
    with pytest.raises(ValueError, match="mode"):
        evaluate(prepared, calibration, reference[:10], mode="bogus")  # type: ignore[arg-type]
    other = PreparedReference.of(reference[:, :3], ["a", "b", "c"])
    with pytest.raises(ValueError, match="no threshold for a, b, c"):
        evaluate(other, calibration, reference[:10, :3])
    with pytest.raises(ValueError, match="false-alarm rate"):
        calibrate(prepared, 50, false_alarm_rate=0)
    with pytest.raises(ValueError, match="at least 20"):
        calibrate(PreparedReference.of(reference[:10], names), 50)


def test_the_calibrated_ks_statistic_is_scipys_on_tied_and_continuous_data() -> None:
    data = load_diabetes()
    names = list(data.feature_names)
    prepared = PreparedReference.of(data.data[:300], names)
    calibration = calibrate(prepared, 100, draws=20)
    window = as_logged(data.data[300:400])

    for index, feature in enumerate(evaluate(prepared, calibration, window).features):
        if feature.test != CALIBRATED_KS_TEST:
            continue
        expected = stats.ks_2samp(prepared.columns[index].sorted_values, window[:, index]).statistic
        assert feature.statistic == pytest.approx(expected, abs=1e-12), feature.feature


def test_a_value_the_reference_never_had_drifts_a_categorical_feature() -> None:
    reference, held_out, names = split(load_diabetes)
    site = np.ones((len(reference), 1))  # one site in the training data
    prepared = PreparedReference.of(np.hstack([reference, site]), [*names, "site"], {"site": CATEGORICAL})
    calibration = calibrate(prepared, 100)
    window = np.hstack([held_out[:100], np.ones((100, 1))])

    same = evaluate(prepared, calibration, as_logged(window))
    assert not same.drifted
    assert same.features[-1].statistic == 0 and same.features[-1].threshold == np.inf

    window[:30, -1] = 2.0  # a new site
    moved = evaluate(prepared, calibration, as_logged(window))
    assert moved.drifted and [f.feature for f in moved.features if f.drifted] == ["site"]
    assert np.isfinite(moved.features[-1].threshold)
