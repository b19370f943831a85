"""What the explainer refuses, and how: every refusal is an ExplainError (a CascadeError, so a
service maps it to a gRPC status once) with a message that says what was wrong and what it takes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

from cascade.errors import CascadeError
from cascade.explain import (
    ExplainBudget,
    ExplainBudgetExceeded,
    ExplainDeadlineExceeded,
    ExplainError,
    ExplainUnsupported,
    OnnxExplainer,
)
from tests.explain.families import family


@pytest.fixture(scope="module")
def explainer() -> OnnxExplainer:
    case = family("iris", "random_forest")
    return OnnxExplainer(case.onnx, case.background, case.features)


def test_explain_errors_are_cascade_errors_with_their_grpc_status() -> None:
    assert issubclass(ExplainError, CascadeError)
    assert ExplainError("x").status == grpc.StatusCode.INVALID_ARGUMENT
    assert ExplainBudgetExceeded("x").status == grpc.StatusCode.INVALID_ARGUMENT
    assert ExplainUnsupported("x").status == grpc.StatusCode.FAILED_PRECONDITION
    assert ExplainDeadlineExceeded("x").status == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("shape", [(3, 5), (3, 3), (4,), (0, 4), (2, 2, 4)])
def test_rows_of_the_wrong_shape_are_refused(explainer: OnnxExplainer, shape: tuple[int, ...]) -> None:
    with pytest.raises(ExplainError, match=r"rows must have shape \[rows, 4\]"):
        explainer.explain(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rows_with_nan_or_infinite_values_are_refused_naming_row_and_feature(
    explainer: OnnxExplainer, bad: float
) -> None:
    rows = np.ones((3, 4), dtype=np.float32)
    rows[2, 1] = bad
    with pytest.raises(ExplainError, match=r"row 2 has a NaN or infinite value \(feature 'f1'\)"):
        explainer.explain(rows)


def test_a_class_out_of_range_is_refused(explainer: OnnxExplainer) -> None:
    with pytest.raises(ExplainError, match="class index 3 is out of range: the model has 3 classes"):
        explainer.explain(np.ones((1, 4), dtype=np.float32), output=3)


def test_a_regressor_has_no_class_to_ask_for() -> None:
    case = family("diabetes", "ridge")
    with pytest.raises(ExplainError, match="a regressor has no classes"):
        OnnxExplainer(case.onnx, case.background, case.features).explain(case.rows, output=0)


def test_more_rows_than_the_budget_allows_are_refused(explainer: OnnxExplainer) -> None:
    with pytest.raises(ExplainBudgetExceeded, match="5 rows asked, budget 4 rows"):
        explainer.explain(np.ones((5, 4), dtype=np.float32), budget=ExplainBudget(max_rows=4))


def test_kernel_shap_over_its_evaluation_budget_is_refused_before_it_starts_saying_what_it_needs() -> None:
    case = family("wine", "random_forest")
    explainer = OnnxExplainer(
        case.onnx, case.background[:10], case.features, method="kernel", kernel_samples=100
    )
    # 3 rows x 100 coalitions x 10 background rows, plus the 3 rows themselves.
    with pytest.raises(ExplainBudgetExceeded, match=r"needs 3000 evaluations .* budget 2997"):
        explainer.explain(case.rows[:3], budget=ExplainBudget(max_evaluations=3000))
    explanation = explainer.explain(case.rows[:3], budget=ExplainBudget(max_evaluations=3003))
    assert explanation.evaluations == 3003


def test_exact_paths_need_one_evaluation_per_row(explainer: OnnxExplainer) -> None:
    rows = np.ones((5, 4), dtype=np.float32)
    assert explainer.explain(rows, budget=ExplainBudget(max_evaluations=5)).evaluations == 5
    with pytest.raises(ExplainBudgetExceeded, match="needs at least 5 evaluations"):
        explainer.explain(rows, budget=ExplainBudget(max_evaluations=4))


def test_a_passed_deadline_stops_the_work_with_deadline_exceeded() -> None:
    case = family("wine", "random_forest")
    explainer = OnnxExplainer(case.onnx, case.background, case.features, method="kernel")
    with pytest.raises(ExplainDeadlineExceeded, match=r"deadline passed after 0 of 5 rows"):
        explainer.explain(case.rows[:5], budget=ExplainBudget(deadline_seconds=1e-9))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_rows": 0}, "max_rows must be at least 1"),
        ({"max_evaluations": -1}, "max_evaluations must be at least 1"),
        ({"deadline_seconds": 0.0}, "deadline_seconds must be positive"),
    ],
)
def test_a_budget_of_nothing_is_refused(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ExplainError, match=message):
        ExplainBudget(**fields)  # type: ignore[arg-type]


def test_a_background_that_does_not_fit_the_features_is_refused() -> None:
    case = family("iris", "random_forest")
    with pytest.raises(
        ExplainUnsupported, match=r"background must be rows of 4 features, not shape \[10, 3\]"
    ):
        OnnxExplainer(case.onnx, case.background[:10, :3], case.features)
    with pytest.raises(ExplainUnsupported, match="the model reads 4 features, but 3 are named"):
        OnnxExplainer(case.onnx, case.background[:10, :3], case.features[:3])
    background = case.background[:10].copy()
    background[4, 0] = np.nan
    with pytest.raises(ExplainUnsupported, match="background has NaN"):
        OnnxExplainer(case.onnx, background, case.features)


def test_an_artifact_that_is_not_onnx_is_refused() -> None:
    with pytest.raises(ExplainUnsupported, match="not a loadable ONNX model"):
        OnnxExplainer(b"not a model", np.zeros((2, 4), dtype=np.float32), ["a", "b", "c", "d"])


def test_a_classifier_exported_with_zipmap_is_refused_saying_how_to_export_it() -> None:
    case = family("iris", "logistic_regression")
    zipmapped = to_onnx(
        case.pipeline, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=17
    ).SerializeToString()
    with pytest.raises(ExplainUnsupported, match="export classifiers without ZipMap"):
        OnnxExplainer(zipmapped, case.background, case.features)
