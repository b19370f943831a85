import numpy as np
from sklearn.datasets import load_breast_cancer

from services.trainer.training import TrainingResult
from services.validator.gates import Thresholds, judge, score

LIMITS = Thresholds(min_rows=10, min_accuracy=0.7, min_r2=0.0, max_regression=0.02)


def test_score_is_accuracy_of_the_onnx_model(trained_breast_cancer: TrainingResult) -> None:
    data = load_breast_cancer()
    accuracy = score(
        trained_breast_cancer.onnx_bytes, data.data.astype(np.float32), data.target, "classification"
    )
    assert 0.9 < accuracy <= 1.0
    flipped = score(
        trained_breast_cancer.onnx_bytes, data.data.astype(np.float32), 1 - data.target, "classification"
    )
    assert abs(accuracy + flipped - 1.0) < 1e-9


def test_first_candidate_passes_on_its_own_merit() -> None:
    gates = judge("classification", 100, 0.9, None, LIMITS)
    assert all(g.passed for g in gates)
    assert next(g for g in gates if g.name == "no_regression").detail == "no champion yet"


def test_a_candidate_worse_than_the_champion_fails_with_value_and_threshold() -> None:
    gates = {g.name: g for g in judge("classification", 100, 0.90, 0.95, LIMITS)}
    assert not gates["no_regression"].passed
    assert gates["no_regression"].value == 0.90
    assert abs((gates["no_regression"].threshold or 0) - 0.93) < 1e-12
    assert gates["min_accuracy"].passed


def test_too_few_rows_or_too_low_a_score_fail() -> None:
    gates = {g.name: g for g in judge("regression", 5, -0.5, None, LIMITS)}
    assert not gates["enough_fresh_rows"].passed
    assert not gates["min_r2"].passed
