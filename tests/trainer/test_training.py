import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from services.trainer.training import TrainingResult, check_parity, train
from shared.errors import FailedPrecondition, InvalidArgument


def _features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != "target"]


def test_a_classifier_exports_labels_and_probabilities(trained_breast_cancer: TrainingResult) -> None:
    session = ort.InferenceSession(trained_breast_cancer.onnx_bytes)
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    rows = load_breast_cancer().data[:5].astype(np.float32)
    labels, probabilities = session.run(None, {"input": rows})
    assert labels.shape == (5,) and probabilities.shape == (5, 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert trained_breast_cancer.metrics["holdout_accuracy"] > 0.9
    assert len(trained_breast_cancer.trials) == 3


def test_a_regressor_trains_and_exports() -> None:
    frame = load_diabetes(as_frame=True).frame
    result = train(frame, _features(frame), "target", "regression", seed=1, folds=3, holdout=0.2)
    assert result.metrics["holdout_r2"] > 0.3
    prediction = ort.InferenceSession(result.onnx_bytes).run(
        None, {"input": frame[_features(frame)][:3].to_numpy(np.float32)}
    )
    assert prediction[0].shape == (3, 1)


def test_same_data_and_seed_give_identical_predictions() -> None:
    frame = load_breast_cancer(as_frame=True).frame
    runs = [train(frame, _features(frame), "target", "classification", 7, 3, 0.2) for _ in range(2)]
    rows = frame[_features(frame)].to_numpy(np.float32)
    outputs = [ort.InferenceSession(r.onnx_bytes).run(None, {"input": rows}) for r in runs]
    assert np.array_equal(outputs[0][0], outputs[1][0])
    assert np.array_equal(outputs[0][1], outputs[1][1])


def test_too_little_data_is_a_permanent_error() -> None:
    frame = load_breast_cancer(as_frame=True).frame.head(8)
    with pytest.raises(InvalidArgument, match="too few rows"):
        train(frame, _features(frame), "target", "classification", 1, 3, 0.2)


def test_parity_check_catches_a_model_that_predicts_differently(
    trained_breast_cancer: TrainingResult,
) -> None:
    data = load_breast_cancer()
    other = Pipeline([("model", LogisticRegression(max_iter=1000, C=1e-6))]).fit(data.data, 1 - data.target)
    with pytest.raises(FailedPrecondition, match="parity failed"):
        check_parity(
            other, trained_breast_cancer.onnx_bytes, data.data[:50].astype(np.float32), "classification"
        )
