import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from cascade.errors import FailedPrecondition, InvalidArgument
from cascade.services.trainer.training import TrainingResult, check_parity, train
from cascade.training_spec import TrainingSpec


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


def test_every_trial_of_the_search_is_recorded_and_weak_ones_are_pruned(
    trained_breast_cancer: TrainingResult,
) -> None:
    trials = trained_breast_cancer.trials
    assert len(trials) == TrainingSpec().max_trials
    assert [t["number"] for t in trials] == list(range(len(trials)))
    defaults = {"logistic_regression", "random_forest", "xgboost", "lightgbm"}
    assert {t["estimator"] for t in trials} <= defaults
    complete = [t for t in trials if not t["pruned"]]
    assert complete and all(t["folds_scored"] == 3 for t in complete)
    assert any(t["pruned"] and t["folds_scored"] < 3 for t in trials)  # the median pruner stopped some
    best = max(t["score"] for t in complete)
    assert trained_breast_cancer.metrics["cv_accuracy"] == best
    assert trained_breast_cancer.params["estimator"] in defaults
    assert set(trained_breast_cancer.feature_importance) == set(
        load_breast_cancer(as_frame=True).feature_names
    )
    assert set(trained_breast_cancer.durations) == {
        "search",
        "refit",
        "export_and_parity",
        "importance",
        "attribution",
    }
    assert trained_breast_cancer.versions["scikit-learn"]


@pytest.mark.parametrize("strategy", ["grid", "random", "bayesian"])
def test_each_strategy_stays_within_its_trial_budget(strategy: str) -> None:
    frame = load_diabetes(as_frame=True).frame
    spec = TrainingSpec(strategy=strategy, max_trials=5, estimators=["ridge"])  # type: ignore[arg-type]
    result = train(frame, _features(frame), "target", "regression", spec=spec)
    # A grid is as long as its points (3 values of alpha by default); other strategies use the budget.
    assert len(result.trials) == (3 if strategy == "grid" else 5)
    assert result.params["estimator"] == "ridge"
    if strategy == "grid":  # grid points are tried in order: alpha from the low end up
        alphas = [float(t["params"]["alpha"]) for t in result.trials]
        assert alphas == sorted(alphas)


def test_a_spec_can_choose_families_and_metric() -> None:
    frame = load_breast_cancer(as_frame=True).frame
    spec = TrainingSpec(estimators=["random_forest"], primary_metric="f1_macro", max_trials=3)
    result = train(frame, _features(frame), "target", "classification", spec=spec)
    assert result.params["estimator"] == "random_forest"
    assert set(result.metrics) == {"cv_f1_macro", "holdout_f1_macro"}
    with pytest.raises(ValueError, match="do not do regression"):
        TrainingSpec(estimators=["logistic_regression"]).resolved("regression")


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
