"""Models brought in through the trainer's import (XGBoost JSON and LightGBM text, converted by
onnxmltools exactly as cascade.services.trainer.importing does) get the exact tree path too, and
its values are the exact Shapley values: shap's KernelExplainer enumerating every coalition on the
library's own raw score (XGBoost's output_margin, LightGBM's raw_score), same rows and background,
within 1e-5 (the ONNX graph holds float32 leaf values)."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

from cascade.explain import OnnxExplainer
from cascade.services.trainer.importing import convert_and_check

xgboost = pytest.importorskip("xgboost")
lightgbm = pytest.importorskip("lightgbm")
shap = pytest.importorskip("shap")
warnings.filterwarnings("ignore", category=UserWarning)


def _xgboost(x: np.ndarray, y: np.ndarray, task: str) -> tuple[bytes, Callable[[np.ndarray], np.ndarray]]:
    estimator = xgboost.XGBClassifier if task == "classification" else xgboost.XGBRegressor
    model = estimator(n_estimators=25, max_depth=4, random_state=0).fit(x, y)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.json")
        model.save_model(path)
        with open(path, "rb") as file:
            data = file.read()
    booster = model.get_booster()

    def margin(rows: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(xgboost.DMatrix(rows.astype(np.float32)), output_margin=True))

    return data, margin


def _lightgbm(x: np.ndarray, y: np.ndarray, task: str) -> tuple[bytes, Callable[[np.ndarray], np.ndarray]]:
    params: dict[str, Any] = {"objective": "regression", "verbose": -1, "seed": 0}
    if task == "classification":
        params |= {"objective": "multiclass", "num_class": len(set(y))}
    booster = lightgbm.train(params, lightgbm.Dataset(x, y), num_boost_round=25)
    return booster.model_to_string().encode(), lambda rows: np.asarray(
        booster.predict(rows.astype(np.float32), raw_score=True)
    )


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
@pytest.mark.parametrize("dataset", ["iris", "diabetes"])
def test_imported_boosting_gets_exact_tree_shap_equal_to_an_exact_kernel_explainer(
    library: str, dataset: str
) -> None:
    task = "classification" if dataset == "iris" else "regression"
    x, y = (load_iris if dataset == "iris" else load_diabetes)(return_X_y=True)
    x = x.astype(np.float32)
    features = [f"f{i}" for i in range(x.shape[1])]
    data, raw = (_xgboost if library == "xgboost" else _lightgbm)(x, y, task)
    imported = convert_and_check(data, library, features, task, x[:50])  # type: ignore[arg-type]
    background, rows = x[::7][:20], x[3::11][:3]
    explainer = OnnxExplainer(imported.onnx_bytes, background, features)
    assert explainer.method == "tree"

    output = 2 if task == "classification" else None
    ours = explainer.explain(rows, output=output)
    assert ours.output_space == ("margin" if task == "classification" else "value")

    def explained(values: np.ndarray) -> np.ndarray:
        scores = raw(values)
        return scores[:, 2] if output is not None else scores

    reference = shap.KernelExplainer(explained, background.astype(np.float64))
    coalitions = 2 ** x.shape[1] - 2
    expected = reference.shap_values(rows.astype(np.float64), nsamples=coalitions, l1_reg=False, silent=True)
    scale = max(1.0, float(np.abs(ours.outputs).max()))
    np.testing.assert_allclose(ours.attributions, expected, atol=1e-5 * scale)
    np.testing.assert_allclose(ours.outputs, explained(rows), atol=1e-5 * scale)
    assert np.abs(ours.base_values + ours.attributions.sum(1) - ours.outputs).max() <= 1e-6
