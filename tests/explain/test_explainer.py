"""The explainer's behaviour beyond additivity: unknown graphs fall back to KernelSHAP, which is
exact on additive models even when it samples coalitions; results are deterministic; the background
is capped; and the helpers the monitor and trainer use (to_dict, global_attribution,
attribution_shares) say what they promise."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cascade.explain import (
    Explanation,
    OnnxExplainer,
    attribution_shares,
    global_attribution,
)
from tests.explain.families import family


def _matmul_regressor(weights: np.ndarray, bias: float) -> bytes:
    """A hand-built ONNX graph no exact path reads: input [N, F] -> MatMul -> Add -> Relu(+1e3)."""
    n = len(weights)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["product"]),
            helper.make_node("Add", ["product", "b"], ["variable"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [n, 1], weights.astype(np.float32).tolist()),
            helper.make_tensor("b", TensorProto.FLOAT, [1], [bias]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.parametrize("n_features", [5, 30])
def test_an_unknown_graph_gets_kernel_shap_exact_on_an_additive_model(n_features: int) -> None:
    """For f(x) = w.x + b the Shapley values are w (x - mean(background)). KernelSHAP's fit is exact on
    an additive game whichever coalitions it draws, so with 30 features (sampled, not enumerated) it
    must still equal them: a check of the sampling, the kernel weights and the constrained solve."""
    rng = np.random.default_rng(3)
    weights = rng.normal(size=n_features)
    background = rng.normal(size=(40, n_features)).astype(np.float32)
    rows = rng.normal(size=(6, n_features)).astype(np.float32)
    explainer = OnnxExplainer(
        _matmul_regressor(weights, 0.5), background, [f"x{i}" for i in range(n_features)]
    )
    explanation = explainer.explain(rows)

    assert explainer.method == explanation.method == "kernel"
    assert explanation.output_space == "value"
    expected = weights * (rows.astype(np.float64) - background.astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(explanation.attributions, expected, atol=1e-4)
    np.testing.assert_allclose(
        explanation.base_values + explanation.attributions.sum(1), explanation.outputs, atol=1e-6
    )


def test_a_feature_equal_to_every_background_row_gets_exactly_zero() -> None:
    case = family("iris", "random_forest")
    background = case.background.copy()
    background[:, 2] = 1.5
    rows = case.rows[:4].copy()
    rows[:, 2] = 1.5
    for method in ("auto", "kernel"):
        explanation = OnnxExplainer(case.onnx, background, case.features, method=method).explain(rows)  # type: ignore[arg-type]
        assert np.all(explanation.attributions[:, 2] == 0.0)


def test_kernel_shap_is_deterministic_for_a_seed() -> None:
    case = family("breast_cancer", "gradient_boosting")
    first = OnnxExplainer(
        case.onnx, case.background[:15], case.features, method="kernel", kernel_samples=400, seed=5
    )
    second = OnnxExplainer(
        case.onnx, case.background[:15], case.features, method="kernel", kernel_samples=400, seed=5
    )
    np.testing.assert_array_equal(
        first.explain(case.rows[:2]).attributions, second.explain(case.rows[:2]).attributions
    )


def test_the_background_is_capped_at_max_background_rows_drawn_from_it() -> None:
    case = family("wine", "gradient_boosting")
    explainer = OnnxExplainer(case.onnx, case.background, case.features, max_background=10)
    assert explainer.background.shape == (10, case.rows.shape[1])
    assert {tuple(row) for row in explainer.background} <= {tuple(row) for row in case.background}
    explanation = explainer.explain(case.rows[:3])
    assert (
        np.abs(explanation.base_values + explanation.attributions.sum(1) - explanation.outputs).max() <= 1e-6
    )


def test_to_dict_is_json_safe_and_complete() -> None:
    case = family("iris", "logistic_regression")
    explanation = OnnxExplainer(case.onnx, case.background, case.features).explain(case.rows[:2])
    document = json.loads(json.dumps(explanation.to_dict()))
    assert document["features"] == case.features
    assert document["method"] == "linear" and document["output_space"] == "margin"
    assert document["class_indices"] == [int(c) for c in explanation.class_indices]
    assert document["class_labels"] == explanation.class_labels
    assert np.allclose(document["attributions"], explanation.attributions)
    assert document["evaluations"] == 2


def test_global_attribution_is_the_mean_absolute_attribution_per_feature() -> None:
    case = family("diabetes", "gradient_boosting")
    explainer = OnnxExplainer(case.onnx, case.background, case.features)
    mean_abs = global_attribution(explainer, case.rows)
    explanation = explainer.explain(case.rows)
    assert list(mean_abs) == case.features
    np.testing.assert_allclose(list(mean_abs.values()), np.abs(explanation.attributions).mean(axis=0))


def test_attribution_shares_average_each_row_s_share_of_its_total() -> None:
    explanation = Explanation(
        features=["a", "b", "c"],
        method="kernel",
        output_space="value",
        class_indices=np.array([-1, -1, -1]),
        class_labels=None,
        base_values=np.zeros(3),
        attributions=np.array([[1.0, -3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 0.0]]),
        outputs=np.array([-2.0, 0.0, 4.0]),
        evaluations=3,
        seconds=0.0,
    )
    # Rows 0 and 2 move the output (shares .25/.75/0 and .5/.5/0); row 1 does not and carries none.
    np.testing.assert_allclose(attribution_shares(explanation), [0.375, 0.625, 0.0])


def _as_branch_lt(onnx_bytes: bytes) -> bytes:
    """The same forest with every `x <= t` split rewritten as `x < next float32 above t` (the form
    XGBoost exports take): identical decisions on float32 inputs, but read by the walk algorithm."""
    model = onnx.load_model_from_string(onnx_bytes)
    (node,) = [n for n in model.graph.node if n.op_type.startswith("TreeEnsemble")]
    attributes = {a.name: a for a in node.attribute}
    modes = list(attributes["nodes_modes"].strings)
    thresholds = np.asarray(attributes["nodes_values"].floats, dtype=np.float32)
    inner = np.array([m == b"BRANCH_LEQ" for m in modes])
    shifted = np.where(inner, np.nextafter(thresholds, np.float32(np.inf)), thresholds)
    del attributes["nodes_modes"].strings[:]
    attributes["nodes_modes"].strings.extend([b"BRANCH_LT" if m == b"BRANCH_LEQ" else m for m in modes])
    del attributes["nodes_values"].floats[:]
    attributes["nodes_values"].floats.extend(shifted.tolist())
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("dataset", "estimator"), [("wine", "random_forest"), ("diabetes", "gradient_boosting")]
)
def test_trees_split_by_other_modes_are_walked_to_the_same_exact_values(dataset: str, estimator: str) -> None:
    """scikit-learn's trees (x <= t) are explained by leaf games; any other split mode goes through
    the walk algorithm, which must give the same values to rounding on the same forest."""
    case = family(dataset, estimator)
    leaves = OnnxExplainer(case.onnx, case.background, case.features)
    walks = OnnxExplainer(_as_branch_lt(case.onnx), case.background, case.features)
    assert leaves._exact is not None and walks._exact is not None
    assert leaves._exact._leaves is not None and walks._exact._leaves is None  # type: ignore[attr-defined]
    expected, walked = leaves.explain(case.rows), walks.explain(case.rows)
    assert walked.method == "tree"
    np.testing.assert_array_equal(walked.class_indices, expected.class_indices)
    np.testing.assert_allclose(walked.attributions, expected.attributions, atol=1e-9, rtol=1e-9)
    np.testing.assert_allclose(walked.base_values, expected.base_values, atol=1e-9, rtol=1e-9)


def test_an_exact_path_that_does_not_reproduce_the_session_is_not_trusted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The guard on every exact path: weights read from the graph must give back the session's own
    outputs on the background, else the artifact is explained by KernelSHAP over the session."""
    from cascade.explain import _tree

    case = family("iris", "gradient_boosting")
    misread = _tree.TreePath.predict
    monkeypatch.setattr(_tree.TreePath, "predict", lambda self, rows: misread(self, rows) + 1e-3)
    explainer = OnnxExplainer(case.onnx, case.background, case.features)
    assert explainer.method == "kernel" and explainer.output_space == "probability"
    assert "does not reproduce this artifact" in caplog.text
