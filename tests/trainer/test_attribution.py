"""What a trained or imported version carries for explaining its predictions: a deterministic
background of its training rows (`explain_background`) and its global attribution on the hold-out
(`global_attribution`), computed on the exported ONNX, and a run that still succeeds when the
model cannot be explained."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cascade.services.trainer.attribution import (
    BACKGROUND_TAG,
    GLOBAL_ATTRIBUTION_TAG,
    ExplainLimits,
    background_sample,
    global_attribution_record,
)
from cascade.services.trainer.core import ImportRequest
from cascade.services.trainer.settings import TrainerSettings
from cascade.services.trainer.training import TrainingResult, export_onnx, train
from cascade.splits import holdout_mask
from cascade.training_spec import TrainingSpec
from tests.trainer.test_core_with_fakes import DATASET, Rig, arrived, rig  # noqa: F401 (the fixture)

FAST = TrainingSpec(max_trials=2, estimators=["logistic_regression"], seed=3)


def _breast_cancer() -> tuple[pd.DataFrame, list[str]]:
    frame = load_breast_cancer(as_frame=True).frame
    return frame, [c for c in frame.columns if c != "target"]


def _rows_of(frame: pd.DataFrame, features: list[str]) -> set[tuple[float, ...]]:
    return {tuple(row) for row in frame[features].to_numpy(dtype=np.float32).tolist()}


def test_a_trained_version_carries_a_background_of_its_own_training_rows(
    trained_breast_cancer: TrainingResult,
) -> None:
    frame, features = _breast_cancer()
    background = json.loads(trained_breast_cancer.explain_tags[BACKGROUND_TAG])
    assert background["features"] == features
    assert len(background["rows"]) == 100
    training = frame[~holdout_mask(frame, 0.2)]
    rows = {tuple(np.asarray(row, dtype=np.float32).tolist()) for row in background["rows"]}
    assert len(rows) == 100  # no row twice
    assert rows <= _rows_of(training, features)  # every one a training row, none held out


def test_the_background_sample_is_the_same_for_the_same_rows_and_seed() -> None:
    rows = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    first, again, other = (background_sample(rows, 100, seed) for seed in (7, 7, 8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.all(np.diff(first[:, 0]) > 0)  # kept in the rows' order
    assert np.array_equal(background_sample(rows[:40], 100, 7), rows[:40])  # fewer rows: all of them


def test_a_trained_version_carries_its_global_attribution_on_the_hold_out(
    trained_breast_cancer: TrainingResult,
) -> None:
    _, features = _breast_cancer()
    record = json.loads(trained_breast_cancer.explain_tags[GLOBAL_ATTRIBUTION_TAG])
    assert record["method"] in {"linear", "tree", "kernel"}
    assert record["output_space"] in {"probability", "margin", "value"}
    held_out = int(holdout_mask(load_breast_cancer(as_frame=True).frame, 0.2).sum())
    assert record["rows"] == min(200, held_out)
    assert list(record["mean_abs"]) == features
    assert all(value >= 0 for value in record["mean_abs"].values())
    assert sum(record["mean_abs"].values()) > 0
    assert trained_breast_cancer.durations["attribution"] >= 0


def test_the_global_attribution_ranks_first_the_feature_the_target_depends_on() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(400, 5)), columns=["a", "b", "signal", "c", "d"])
    frame["target"] = (frame["signal"] + 0.1 * rng.normal(size=400) > 0).astype(int)
    features = ["a", "b", "signal", "c", "d"]
    result = train(frame, features, "target", "classification", spec=FAST)
    mean_abs = json.loads(result.explain_tags[GLOBAL_ATTRIBUTION_TAG])["mean_abs"]
    assert max(mean_abs, key=mean_abs.get) == "signal"
    assert mean_abs["signal"] > 3 * max(v for k, v in mean_abs.items() if k != "signal")


def test_a_model_that_cannot_be_explained_gets_no_global_attribution() -> None:
    background = np.zeros((10, 3), dtype=np.float32)
    assert (
        global_attribution_record(b"not onnx", background, ["a", "b", "c"], background, ExplainLimits(), 1)
        is None
    )


def test_a_model_that_cannot_be_explained_within_budget_trains_without_global_attribution() -> None:
    frame, features = _breast_cancer()
    result = train(
        frame, features, "target", "classification", spec=FAST, explain=ExplainLimits(max_evaluations=1)
    )
    assert GLOBAL_ATTRIBUTION_TAG not in result.explain_tags
    assert len(json.loads(result.explain_tags[BACKGROUND_TAG])["rows"]) == 100  # the background still
    assert result.metrics["holdout_accuracy"] > 0.9


def test_a_background_larger_than_the_contract_is_refused() -> None:
    with pytest.raises(ValueError, match="background_rows"):
        ExplainLimits(background_rows=101)
    with pytest.raises(ValueError):
        TrainerSettings(explain_background_rows=500)


async def test_a_registered_version_carries_both_tags(rig: Rig) -> None:  # noqa: F811
    rig.registry.spec = FAST
    await rig.core.on_data_arrived(arrived("v2"))
    [created] = rig.registry.created
    tags = created["tags"]
    assert len(json.loads(tags[BACKGROUND_TAG])["rows"]) == 100
    assert set(json.loads(tags[GLOBAL_ATTRIBUTION_TAG])["mean_abs"]) == set(json.loads(tags["features"]))


async def test_an_imported_version_gets_a_background_from_its_reference_training_rows(
    rig: Rig,  # noqa: F811
) -> None:
    frame, features = _breast_cancer()
    pipeline = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000))])
    pipeline.fit(frame[features].to_numpy(np.float32), frame["target"])
    onnx_bytes = export_onnx(pipeline, len(features), "classification")
    request = ImportRequest(model="imported", model_format="onnx", dataset=DATASET)
    outcome = await rig.core.import_model(request, onnx_bytes)
    assert outcome.monitored
    [created] = rig.registry.created
    background = json.loads(created["tags"][BACKGROUND_TAG])
    assert background["features"] == features
    training = frame[~holdout_mask(frame[[*features, "target"]], TrainerSettings().holdout_fraction)]
    assert {tuple(np.asarray(r, dtype=np.float32).tolist()) for r in background["rows"]} <= _rows_of(
        training, features
    )
    record = json.loads(created["tags"][GLOBAL_ATTRIBUTION_TAG])
    assert set(record["mean_abs"]) == set(features)


async def test_an_imported_version_without_a_reference_has_no_background(rig: Rig) -> None:  # noqa: F811
    frame, features = _breast_cancer()
    pipeline = Pipeline([("model", LogisticRegression(max_iter=5000))])
    pipeline.fit(frame[features].to_numpy(np.float32), frame["target"])
    onnx_bytes = export_onnx(pipeline, len(features), "classification")
    csv = frame[features].head(20).to_csv(index=False).encode()
    request = ImportRequest(
        model="imported",
        model_format="onnx",
        features=tuple(features),
        task="classification",
        parity_rows_csv=csv,
    )
    await rig.core.import_model(request, onnx_bytes)
    [created] = rig.registry.created
    assert BACKGROUND_TAG not in created["tags"]
    assert GLOBAL_ATTRIBUTION_TAG not in created["tags"]
