"""XGBoost and LightGBM in the trainer's search: real searches on scikit-learn's bundled data train
each family, export it through onnxmltools (the converter imports use) and pass the same parity
check; the default search tries them only where their libraries import."""

from __future__ import annotations

import json
import sys

import lightgbm
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from cascade.errors import FailedPrecondition, InvalidArgument
from cascade.services.trainer.attribution import GLOBAL_ATTRIBUTION_TAG
from cascade.services.trainer.boosting import boosting_to_onnx, lightgbm_float32_thresholds
from cascade.services.trainer.training import TrainingResult, train, trainable_families
from cascade.training_spec import Task, TrainingSpec

DATASETS = {
    "breast_cancer": (load_breast_cancer, "classification"),
    "diabetes": (load_diabetes, "regression"),
}
FLOOR = {"classification": ("holdout_accuracy", 0.9), "regression": ("holdout_r2", 0.3)}


def _frame(dataset: str) -> tuple[pd.DataFrame, list[str], Task]:
    load, task = DATASETS[dataset]
    frame = load(as_frame=True).frame
    return frame, [c for c in frame.columns if c != "target"], task  # type: ignore[return-value]


def _outputs(result: TrainingResult, rows: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(result.onnx_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    return list(session.run(None, {"input": rows.astype(np.float32)}))


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
@pytest.mark.parametrize("dataset", ["breast_cancer", "diabetes"])
def test_a_search_of_the_family_trains_exports_and_passes_parity(family: str, dataset: str) -> None:
    frame, features, task = _frame(dataset)
    spec = TrainingSpec(estimators=[family], max_trials=6)  # type: ignore[list-item]
    result = train(frame, features, "target", task, spec=spec)

    assert result.params["estimator"] == family
    assert {t["estimator"] for t in result.trials} == {family} and len(result.trials) == 6
    # The search drew from the family's range: not one fixed configuration.
    assert len({t["params"]["n_estimators"] for t in result.trials}) > 1
    metric, floor = FLOOR[task]
    assert result.metrics[metric] > floor
    assert result.versions.keys() >= {family, "onnxmltools", "onnxruntime"}

    # The artifact reproduces the outputs the original model gave, which the validator rechecks.
    reference = result.parity_reference
    rows = np.asarray(reference["rows"], dtype=np.float32)
    outputs = _outputs(result, rows)
    if task == "classification":
        labels, probabilities = outputs
        assert np.array_equal(labels, np.asarray(reference["labels"]).ravel())
        assert np.allclose(probabilities, reference["outputs"], atol=1e-4)
        assert probabilities.shape == (len(rows), 2)
    else:
        assert outputs[0].shape == (len(rows), 1)
        expected = np.asarray(reference["outputs"])
        assert np.allclose(outputs[0], expected, rtol=1e-4, atol=1e-4)

    # cascade.explain takes the export on its exact tree path.
    attribution = json.loads(result.explain_tags[GLOBAL_ATTRIBUTION_TAG])
    assert attribution["method"] == "tree"
    assert set(attribution["mean_abs"]) == set(features)


def test_lightgbm_multiclass_is_explained_on_the_tree_path() -> None:
    """LightGBM ends multiclass forests with one-leaf trees, which the explainer's leaf games once
    indexed past their end (and the run lost its global attribution)."""
    frame = load_wine(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    spec = TrainingSpec(estimators=["lightgbm"], max_trials=4)
    result = train(frame, features, "target", "classification", spec=spec)
    labels, probabilities = _outputs(result, frame[features].to_numpy(np.float32))
    assert probabilities.shape == (len(frame), 3)
    assert np.mean(labels == frame["target"].to_numpy()) > 0.9
    assert json.loads(result.explain_tags[GLOBAL_ATTRIBUTION_TAG])["method"] == "tree"


def test_lightgbm_thresholds_are_lowered_to_float32_without_changing_an_answer() -> None:
    """For every split whose double threshold rounds UP to a float32, a row holding exactly that
    float32 goes right in LightGBM and (rounded to nearest) left in ONNX; lowered, both agree."""
    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    model = lightgbm.LGBMRegressor(n_estimators=60, num_leaves=8, n_jobs=1, verbose=-1).fit(x, y)
    thresholds = []
    for tree in model.booster_.dump_model()["tree_info"]:
        nodes = [tree["tree_structure"]]
        while nodes:
            node = nodes.pop()
            if "threshold" in node:
                thresholds.append((node["split_feature"], float(node["threshold"])))
                nodes += [node["left_child"], node["right_child"]]
    rounded_up = [(f, np.float32(t)) for f, t in thresholds if float(np.float32(t)) > t]
    assert rounded_up  # the case exists in this model
    rows = np.repeat(np.median(x, axis=0, keepdims=True), len(rounded_up), axis=0)
    for row, (feature, value) in enumerate(rounded_up):
        rows[row, feature] = value

    lowered = lightgbm_float32_thresholds(model.booster_)
    assert np.array_equal(lowered.predict(rows), model.booster_.predict(rows))
    assert np.array_equal(lowered.predict(x), model.booster_.predict(x))
    exported = boosting_to_onnx(model, x.shape[1], "input")
    values = ort.InferenceSession(exported).run(None, {"input": rows})[0].ravel()
    assert np.allclose(values, model.predict(rows), rtol=1e-5)


def test_the_default_search_includes_both_families_and_tries_them() -> None:
    labels = np.array([0, 1, 1, 0])
    assert trainable_families(TrainingSpec(), "classification", labels).estimators == [
        "logistic_regression",
        "random_forest",
        "xgboost",
        "lightgbm",
    ]
    assert trainable_families(TrainingSpec(), "regression", None).estimators == [
        "ridge",
        "random_forest",
        "xgboost",
        "lightgbm",
    ]
    frame, features, task = _frame("breast_cancer")
    result = train(frame, features, "target", task)  # the default spec: 12 trials
    assert {"xgboost", "lightgbm"} <= {t["estimator"] for t in result.trials}


def test_without_a_library_the_default_search_leaves_its_family_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)  # import xgboost now raises ImportError
    frame, features, task = _frame("diabetes")
    assert trainable_families(TrainingSpec(), task, None).estimators == ["ridge", "random_forest", "lightgbm"]
    result = train(frame, features, "target", task, spec=TrainingSpec(max_trials=8))
    assert "xgboost" not in {t["estimator"] for t in result.trials}

    with pytest.raises(FailedPrecondition, match=r"xgboost \(needs xgboost\).*cascade-mlops\[import\]"):
        train(frame, features, "target", task, spec=TrainingSpec(estimators=["ridge", "xgboost"]))


def test_without_onnxmltools_neither_family_is_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxmltools", None)
    assert trainable_families(TrainingSpec(), "regression", None).estimators == ["ridge", "random_forest"]
    with pytest.raises(FailedPrecondition, match=r"lightgbm \(needs onnxmltools\)"):
        trainable_families(TrainingSpec(estimators=["lightgbm"]), "regression", None)


def test_classes_other_than_0_to_n_leave_boosting_out_or_are_refused_by_name() -> None:
    frame, features, task = _frame("breast_cancer")
    frame = frame.assign(target=frame["target"] + 1)  # classes 1 and 2
    result = train(frame, features, "target", task, spec=TrainingSpec(max_trials=6))
    assert not {"xgboost", "lightgbm"} & {t["estimator"] for t in result.trials}
    with pytest.raises(InvalidArgument, match=r"xgboost need class labels 0..n-1; the target holds \[1, 2\]"):
        train(frame, features, "target", task, spec=TrainingSpec(estimators=["xgboost"]))
