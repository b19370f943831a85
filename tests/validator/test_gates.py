import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cascade.services.trainer.training import TrainingResult
from cascade.services.validator.gates import (
    Thresholds,
    judge,
    latency_gate,
    parity_gate,
    schema_gate,
    score,
    size_gate,
)

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


SIGNATURE = {"inputs": [("input", "FP32", (-1, 30))], "outputs": [("label", "INT64", (-1,))]}


def test_schema_gate_refuses_an_undeclared_change_only() -> None:
    wider = {**SIGNATURE, "inputs": [("input", "FP32", (-1, 31))]}
    assert schema_gate(SIGNATURE, SIGNATURE, declared_change=False).passed
    assert schema_gate(SIGNATURE, None, declared_change=False).passed
    refused = schema_gate(wider, SIGNATURE, declared_change=False)
    assert not refused.passed and "(-1, 31)" in refused.detail and "inputs" in refused.detail
    assert schema_gate(wider, SIGNATURE, declared_change=True).passed


def test_latency_gate_measures_one_row_runs(trained_breast_cancer: TrainingResult) -> None:
    rows = load_breast_cancer().data.astype(np.float32)
    unlimited = latency_gate(trained_breast_cancer.onnx_bytes, rows, budget_ms=float("inf"), samples=50)
    assert unlimited.passed and unlimited.value is not None and unlimited.value > 0
    impossible = latency_gate(trained_breast_cancer.onnx_bytes, rows, budget_ms=0.0, samples=50)
    assert not impossible.passed and impossible.threshold == 0.0


def test_size_gate() -> None:
    assert size_gate(1000, 2000).passed
    refused = size_gate(3000, 2000)
    assert not refused.passed and (refused.value, refused.threshold) == (3000, 2000)


def test_thresholds_can_be_overridden_per_model_and_typos_fail_fast() -> None:
    strict = LIMITS.overridden({"min_accuracy": 0.95, "min_rows": 50})
    assert (strict.min_accuracy, strict.min_rows, strict.max_regression) == (0.95, 50, 0.02)
    assert isinstance(strict.min_rows, int)
    with pytest.raises(ValueError, match="unknown thresholds"):
        LIMITS.overridden({"min_acuracy": 0.9})


def test_parity_gate_rechecks_the_artifact_against_the_trainers_reference(
    trained_breast_cancer: TrainingResult,
) -> None:
    reference = trained_breast_cancer.parity_reference
    assert len(reference["rows"]) == 16 and len(reference["labels"]) == 16
    passed = parity_gate(trained_breast_cancer.onnx_bytes, reference, "classification")
    assert passed.passed and passed.value is not None and passed.value <= 1e-4
    shifted = {**reference, "outputs": [[p + 0.01 for p in row] for row in reference["outputs"]]}
    failed = parity_gate(trained_breast_cancer.onnx_bytes, shifted, "classification")
    assert not failed.passed and failed.value is not None and failed.value > 1e-4
    flipped = {**reference, "labels": [[1 - row[0]] for row in reference["labels"]]}
    assert "labels differ" in parity_gate(trained_breast_cancer.onnx_bytes, flipped, "classification").detail
    assert not parity_gate(trained_breast_cancer.onnx_bytes, None, "classification").passed
