"""Bring your own model: each format converts to an ONNX artifact that predicts what the original
predicts, and bad files are refused with a short reason."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import lightgbm
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cascade.errors import FailedPrecondition, InvalidArgument
from cascade.services.trainer.importing import ImportedModel, convert_and_check, parity_rows_from_csv
from cascade.services.trainer.training import export_onnx

CANCER = load_breast_cancer(as_frame=True)
CANCER_FEATURES = list(CANCER.feature_names)
CANCER_ROWS = CANCER.data.to_numpy(np.float32)
DIABETES = load_diabetes(as_frame=True)
DIABETES_FEATURES = list(DIABETES.feature_names)
DIABETES_ROWS = DIABETES.data.to_numpy(np.float32)


def _outputs(imported: ImportedModel, rows: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(imported.onnx_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    # Every output has a row per input row, as declared: serving and the validator read the shapes.
    for output in session.get_outputs():
        assert not isinstance(output.shape[0], int), output
    return list(session.run(None, {"input": rows}))


def _xgboost_file(model: xgboost.XGBModel, tmp_path: Path) -> bytes:
    path = tmp_path / "model.json"
    model.save_model(path)
    return path.read_bytes()


def test_an_xgboost_classifier_converts_with_parity(tmp_path: Path) -> None:
    model = xgboost.XGBClassifier(n_estimators=30, max_depth=3).fit(CANCER.data, CANCER.target)
    imported = convert_and_check(
        _xgboost_file(model, tmp_path), "xgboost", CANCER_FEATURES, "classification", CANCER_ROWS
    )
    assert imported.parity_rows == len(CANCER_ROWS)
    assert imported.parity_max_difference < 1e-4
    labels, probabilities = _outputs(imported, CANCER_ROWS)[:2]
    assert np.array_equal(labels, model.predict(CANCER_ROWS))
    assert np.allclose(probabilities, model.predict_proba(CANCER_ROWS), atol=1e-4)
    assert imported.versions.keys() >= {"xgboost", "onnxmltools"}
    reference = imported.parity_reference
    assert len(reference["rows"]) == len(reference["outputs"]) == len(reference["labels"]) == 16


def test_an_xgboost_regressor_converts_with_parity(tmp_path: Path) -> None:
    model = xgboost.XGBRegressor(n_estimators=30).fit(DIABETES.data, DIABETES.target)
    imported = convert_and_check(
        _xgboost_file(model, tmp_path), "xgboost", DIABETES_FEATURES, "regression", DIABETES_ROWS
    )
    values = _outputs(imported, DIABETES_ROWS)[0].ravel()
    assert np.allclose(values, model.predict(DIABETES_ROWS), rtol=1e-4)


def test_xgboost_with_other_feature_names_or_count_is_refused(tmp_path: Path) -> None:
    model = xgboost.XGBClassifier(n_estimators=5).fit(CANCER.data, CANCER.target)
    data = _xgboost_file(model, tmp_path)
    with pytest.raises(InvalidArgument, match="reads 30 features, but 29 were given"):
        convert_and_check(data, "xgboost", CANCER_FEATURES[1:], "classification", CANCER_ROWS[:, 1:])
    swapped = [CANCER_FEATURES[1], CANCER_FEATURES[0], *CANCER_FEATURES[2:]]
    with pytest.raises(InvalidArgument, match="feature 0 is 'mean radius'"):
        convert_and_check(data, "xgboost", swapped, "classification", CANCER_ROWS)


def test_a_lightgbm_classifier_and_regressor_convert_with_parity() -> None:
    # Fitted on a DataFrame: LightGBM saves the column names, with "_" for spaces.
    classifier = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(CANCER.data, CANCER.target)
    imported = convert_and_check(
        classifier.booster_.model_to_string().encode(),
        "lightgbm",
        CANCER_FEATURES,
        "classification",
        CANCER_ROWS,
    )
    labels, probabilities = _outputs(imported, CANCER_ROWS)[:2]
    assert np.array_equal(labels, classifier.predict(CANCER.data))
    assert np.allclose(probabilities, classifier.predict_proba(CANCER.data), atol=1e-4)

    regressor = lightgbm.LGBMRegressor(n_estimators=30, verbose=-1).fit(DIABETES_ROWS, DIABETES.target)
    imported = convert_and_check(
        regressor.booster_.model_to_string().encode(),
        "lightgbm",
        DIABETES_FEATURES,
        "regression",
        DIABETES_ROWS,
    )
    assert np.allclose(
        _outputs(imported, DIABETES_ROWS)[0].ravel(), regressor.predict(DIABETES_ROWS), rtol=1e-4
    )


def test_lightgbm_column_names_must_follow_the_features() -> None:
    classifier = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(CANCER.data, CANCER.target)
    swapped = [CANCER_FEATURES[1], CANCER_FEATURES[0], *CANCER_FEATURES[2:]]
    with pytest.raises(InvalidArgument, match="feature 0 is 'mean_radius', the features say 'mean_texture'"):
        convert_and_check(
            classifier.booster_.model_to_string().encode(), "lightgbm", swapped, "classification", CANCER_ROWS
        )


def test_a_lightgbm_regressor_is_not_a_classifier() -> None:
    regressor = lightgbm.LGBMRegressor(n_estimators=5, verbose=-1).fit(DIABETES_ROWS, DIABETES.target)
    with pytest.raises(InvalidArgument, match="regression objective is not a classification model"):
        convert_and_check(
            regressor.booster_.model_to_string().encode(),
            "lightgbm",
            DIABETES_FEATURES,
            "classification",
            DIABETES_ROWS,
        )


def test_a_sklearn_pickle_converts_only_when_allowed() -> None:
    pipeline = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000))])
    data = pickle.dumps(pipeline.fit(CANCER_ROWS, CANCER.target))
    with pytest.raises(FailedPrecondition, match="pickle import is off"):
        convert_and_check(data, "sklearn_pickle", CANCER_FEATURES, "classification", CANCER_ROWS)
    imported = convert_and_check(
        data, "sklearn_pickle", CANCER_FEATURES, "classification", CANCER_ROWS, allow_pickle=True
    )
    assert imported.parity_max_difference < 1e-4
    assert np.array_equal(_outputs(imported, CANCER_ROWS)[0], pipeline.predict(CANCER_ROWS))
    # A bare estimator is a one-step pipeline.
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(CANCER_ROWS, CANCER.target)
    imported = convert_and_check(
        pickle.dumps(forest),
        "sklearn_pickle",
        CANCER_FEATURES,
        "classification",
        CANCER_ROWS,
        allow_pickle=True,
    )
    assert np.array_equal(_outputs(imported, CANCER_ROWS)[0], forest.predict(CANCER_ROWS))
    with pytest.raises(InvalidArgument, match="holds a dict, not a scikit-learn estimator"):
        convert_and_check(
            pickle.dumps({"a": 1}),
            "sklearn_pickle",
            CANCER_FEATURES,
            "classification",
            CANCER_ROWS,
            allow_pickle=True,
        )


def test_an_onnx_file_is_checked_and_its_input_renamed() -> None:
    pipeline = Pipeline([("model", LogisticRegression(max_iter=2000))]).fit(CANCER_ROWS, CANCER.target)
    exported = export_onnx(pipeline, 30, "classification")
    imported = convert_and_check(exported, "onnx", CANCER_FEATURES, "classification", CANCER_ROWS)
    assert imported.parity_max_difference == 0.0
    assert np.array_equal(_outputs(imported, CANCER_ROWS)[0], pipeline.predict(CANCER_ROWS))
    assert imported.parity_reference["labels"] == [[float(v)] for v in pipeline.predict(CANCER_ROWS[:16])]

    with pytest.raises(InvalidArgument, match=r"input must be \[rows, 29\] for 29 features"):
        convert_and_check(exported, "onnx", CANCER_FEATURES[:29], "classification", CANCER_ROWS[:, :29])
    with pytest.raises(InvalidArgument, match="not a valid ONNX model"):
        convert_and_check(b"not onnx at all", "onnx", CANCER_FEATURES, "classification", CANCER_ROWS)
    regressor_onnx = export_onnx(
        Pipeline([("model", LogisticRegression(max_iter=2000))]).fit(CANCER_ROWS, CANCER.target),
        30,
        "regression",
    )
    # Without zipmap=False a classifier answers a list of dicts, not a probability tensor.
    with pytest.raises(InvalidArgument):
        convert_and_check(regressor_onnx, "onnx", CANCER_FEATURES, "classification", CANCER_ROWS)


def test_a_conversion_that_predicts_otherwise_fails_parity_with_the_difference(tmp_path: Path) -> None:
    """An original whose predictions the ONNX does not reproduce: parity names what differs."""
    from cascade.services.trainer.training import check_parity

    model = xgboost.XGBRegressor(n_estimators=30).fit(DIABETES.data, DIABETES.target)
    other = xgboost.XGBRegressor(n_estimators=31).fit(DIABETES.data, DIABETES.target)
    imported = convert_and_check(
        _xgboost_file(other, tmp_path), "xgboost", DIABETES_FEATURES, "regression", DIABETES_ROWS
    )
    with pytest.raises(InvalidArgument, match=r"ONNX parity failed: max difference \S+ exceeds 0.0001"):
        check_parity(model, imported.onnx_bytes, DIABETES_ROWS, "regression", error=InvalidArgument)


def test_garbage_files_are_invalid_arguments() -> None:
    for model_format in ("xgboost", "lightgbm"):
        with pytest.raises(InvalidArgument, match=r"cannot load the XGBoost model|not a LightGBM text model"):
            convert_and_check(
                b"\x00\x01garbage", model_format, CANCER_FEATURES, "classification", CANCER_ROWS
            )
    with pytest.raises(InvalidArgument, match="no parity rows"):
        convert_and_check(b"x", "onnx", CANCER_FEATURES, "classification", CANCER_ROWS[:0])


def test_parity_rows_from_csv_follow_the_features_order() -> None:
    frame = pd.DataFrame({"b": [1.0, 2.0], "a": [3.0, 4.0], "extra": [0, 0]})
    rows = parity_rows_from_csv(frame.to_csv(index=False).encode(), ["a", "b"])
    assert rows.tolist() == [[3.0, 1.0], [4.0, 2.0]]
    with pytest.raises(InvalidArgument, match=r"lack feature columns \['c'\]"):
        parity_rows_from_csv(frame.to_csv(index=False).encode(), ["a", "c"])


def test_a_trainer_without_the_import_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = xgboost.XGBClassifier(n_estimators=5).fit(CANCER.data, CANCER.target)
    data = _xgboost_file(model, tmp_path)
    monkeypatch.setitem(sys.modules, "onnxmltools", None)  # what an import of a missing package does
    with pytest.raises(
        FailedPrecondition,
        match=r"onnxmltools is not installed on this trainer: install cascade-mlops\[import\]",
    ):
        convert_and_check(data, "xgboost", CANCER_FEATURES, "classification", CANCER_ROWS)


def test_an_xgboost_regressor_is_not_a_classifier(tmp_path: Path) -> None:
    model = xgboost.XGBRegressor(n_estimators=5).fit(DIABETES.data, DIABETES.target)
    with pytest.raises(InvalidArgument, match="Expecting: classifier, got: regressor"):
        convert_and_check(
            _xgboost_file(model, tmp_path), "xgboost", DIABETES_FEATURES, "classification", DIABETES_ROWS
        )
