"""Additivity, the promise every Explanation makes: base + sum(attributions) == output within 1e-6,
on every family the trainer produces (binary and multiclass classifiers, regressors), through the
exact path each gets, and through KernelSHAP forced on the same artifacts; and the output explained is
the artifact's own (its ONNX session's probability or value, or the margin those come from)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from cascade.explain import OnnxExplainer
from tests.explain.families import EXPECTED_METHOD, cases, family

ADDITIVITY = 1e-6


def _session_probabilities(onnx_bytes: bytes, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input": rows})
    return np.asarray(outputs[-1] if len(outputs) > 1 else outputs[0], dtype=np.float64).reshape(
        len(rows), -1
    )


@pytest.mark.parametrize(("dataset", "estimator"), cases())
def test_exact_path_adds_up_to_the_artifact_s_output_within_1e_6(dataset: str, estimator: str) -> None:
    case = family(dataset, estimator)
    explainer = OnnxExplainer(case.onnx, case.background, case.features)
    explanation = explainer.explain(case.rows)

    assert explainer.method == explanation.method == EXPECTED_METHOD[estimator]
    gap = np.abs(explanation.base_values + explanation.attributions.sum(axis=1) - explanation.outputs)
    assert gap.max() <= ADDITIVITY
    probabilities = _session_probabilities(case.onnx, case.rows)
    if case.task == "regression":
        assert explanation.output_space == "value"
        assert list(explanation.class_indices) == [-1] * len(case.rows)
        assert explanation.class_labels is None
        np.testing.assert_allclose(explanation.outputs, probabilities[:, 0], rtol=1e-5)
        return
    # Unasked, each row's predicted class is explained, labelled with the model's class labels.
    np.testing.assert_array_equal(explanation.class_indices, probabilities.argmax(axis=1))
    assert explanation.class_labels == [str(c) for c in case.model.classes_[explanation.class_indices]]
    expected_space = "probability" if estimator == "random_forest" else "margin"
    assert explanation.output_space == expected_space
    chosen = probabilities[np.arange(len(case.rows)), explanation.class_indices]
    if expected_space == "probability":
        np.testing.assert_allclose(explanation.outputs, chosen, atol=1e-6)
    elif probabilities.shape[1] == 2:  # the log-odds of the class: its sigmoid is the probability
        np.testing.assert_allclose(1.0 / (1.0 + np.exp(-explanation.outputs)), chosen, atol=1e-6)
    else:  # a softmax logit: its softmax over the classes is the session's probability
        margins = np.stack(
            [explainer.explain(case.rows, output=k).outputs for k in range(probabilities.shape[1])], axis=1
        )
        softmax = np.exp(margins - margins.max(axis=1, keepdims=True))
        np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), probabilities, atol=1e-5)


@pytest.mark.parametrize(("dataset", "estimator"), [c for c in cases() if c[0] != "breast_cancer"])
def test_kernel_shap_adds_up_exactly_on_every_family(dataset: str, estimator: str) -> None:
    """Forced KernelSHAP (what an unknown graph gets) is additive too: the efficiency constraint is
    eliminated before the fit, not approximated. Its output space is the session's own output."""
    case = family(dataset, estimator)
    explainer = OnnxExplainer(
        case.onnx, case.background[:20], case.features, method="kernel", kernel_samples=300
    )
    explanation = explainer.explain(case.rows[:4])

    assert explanation.method == "kernel"
    assert explanation.output_space == ("value" if case.task == "regression" else "probability")
    gap = np.abs(explanation.base_values + explanation.attributions.sum(axis=1) - explanation.outputs)
    assert gap.max() <= ADDITIVITY
    probabilities = _session_probabilities(case.onnx, case.rows[:4])
    chosen = probabilities[np.arange(4), np.maximum(explanation.class_indices, 0)]
    np.testing.assert_allclose(explanation.outputs, chosen, rtol=1e-6)


@pytest.mark.parametrize("output", [0, 1, 2])
def test_an_asked_class_is_explained_for_every_row(output: int) -> None:
    case = family("wine", "random_forest")
    explanation = OnnxExplainer(case.onnx, case.background, case.features).explain(case.rows, output=output)
    assert list(explanation.class_indices) == [output] * len(case.rows)
    assert explanation.class_labels == [str(output)] * len(case.rows)
    probabilities = _session_probabilities(case.onnx, case.rows)
    np.testing.assert_allclose(explanation.outputs, probabilities[:, output], atol=1e-6)
    assert (
        np.abs(explanation.base_values + explanation.attributions.sum(1) - explanation.outputs).max() <= 1e-6
    )


def test_the_classes_of_a_binary_classifier_are_mirror_images() -> None:
    """In a binary model's log-odds, class 0's attributions are class 1's negated."""
    case = family("breast_cancer", "gradient_boosting")
    explainer = OnnxExplainer(case.onnx, case.background, case.features)
    zero, one = explainer.explain(case.rows, output=0), explainer.explain(case.rows, output=1)
    np.testing.assert_allclose(zero.attributions, -one.attributions, atol=1e-12)
    np.testing.assert_allclose(zero.outputs, -one.outputs, atol=1e-12)
