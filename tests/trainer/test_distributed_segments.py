"""Out-of-core fitting (services/trainer/segments.py): a Parquet file read in Arrow segments gives
the model a whole-frame fit gives (least squares: to rounding; logistic regression by SGD: within
tolerance), exports to ONNX as the trainer's pipelines do, and the families that need the whole
frame are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification, make_regression

from cascade.errors import InvalidArgument
from cascade.services.trainer.segments import INCREMENTAL, WHOLE_FRAME, fit_segments, parquet_segments
from cascade.services.trainer.training import build_pipeline, check_parity, export_onnx
from cascade.splits import holdout_mask

ROWS = 6_000
FEATURES = [f"f{i}" for i in range(8)]


def _parquet(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "version.parquet"
    frame.to_parquet(path, row_group_size=1_000)
    return path


def _whole_frame_rows(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    kept = frame[~holdout_mask(frame[[*FEATURES, "target"]], 0.2)]
    return kept[FEATURES].to_numpy(dtype=np.float32), kept["target"].to_numpy()


@pytest.mark.parametrize("family, params", [("ridge", {"alpha": 3.0}), ("linear_regression", {})])
def test_least_squares_from_segments_is_the_whole_frame_fit(
    tmp_path: Path, family: str, params: dict[str, float]
) -> None:
    x, y = make_regression(n_samples=ROWS, n_features=len(FEATURES), noise=5.0, random_state=0)
    frame = pd.DataFrame(x * np.arange(1, 9), columns=FEATURES).assign(target=y + 100.0)
    segments = parquet_segments(_parquet(tmp_path, frame), FEATURES, "target", 0.2, rows=700)
    assert sum(1 for _ in segments()) > 5  # read in pieces, not at once

    incremental = fit_segments(family, params, segments)
    x_train, y_train = _whole_frame_rows(frame)
    whole = build_pipeline(family, "regression", params, 42).fit(x_train, y_train)

    np.testing.assert_allclose(incremental.predict(x_train), whole.predict(x_train), rtol=1e-5, atol=1e-3)
    check_parity(
        incremental, export_onnx(incremental, len(FEATURES), "regression"), x_train[:64], "regression"
    )


def test_logistic_regression_from_segments_is_within_tolerance_of_the_whole_frame_fit(tmp_path: Path) -> None:
    x, y = make_classification(n_samples=ROWS, n_features=len(FEATURES), n_informative=5, random_state=1)
    frame = pd.DataFrame(x, columns=FEATURES).assign(target=y)
    segments = parquet_segments(_parquet(tmp_path, frame), FEATURES, "target", 0.2, rows=700)
    held_out = frame[holdout_mask(frame[[*FEATURES, "target"]], 0.2)]
    x_test, y_test = held_out[FEATURES].to_numpy(dtype=np.float32), held_out["target"].to_numpy()

    incremental = fit_segments("logistic_regression", {"C": 1.0}, segments, seed=42)
    x_train, y_train = _whole_frame_rows(frame)
    whole = build_pipeline("logistic_regression", "classification", {"C": 1.0}, 42).fit(x_train, y_train)

    incremental_accuracy = float(np.mean(incremental.predict(x_test) == y_test))
    whole_accuracy = float(np.mean(whole.predict(x_test) == y_test))
    assert whole_accuracy > 0.7
    assert incremental_accuracy == pytest.approx(whole_accuracy, abs=0.03)
    assert np.mean(incremental.predict(x_test) == whole.predict(x_test)) > 0.95
    onnx = export_onnx(incremental, len(FEATURES), "classification")
    check_parity(incremental, onnx, x_test[:64], "classification")


@pytest.mark.parametrize("family", sorted(WHOLE_FRAME))
def test_families_that_need_the_whole_frame_are_refused_by_name(tmp_path: Path, family: str) -> None:
    frame = pd.DataFrame(np.ones((50, len(FEATURES))), columns=FEATURES).assign(target=1.0)
    segments = parquet_segments(_parquet(tmp_path, frame), FEATURES, "target", 0.2)
    with pytest.raises(InvalidArgument, match=family):
        fit_segments(family, {}, segments)
    assert family not in INCREMENTAL
