"""The prediction's reference is computed by running the champion's real ONNX artifact, as serving
runs it: float32 rows in, one output per row out."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cascade.services.monitor.loop_clients import first_output_per_row
from cascade.services.trainer.training import export_onnx


def test_a_classifiers_reference_output_is_its_predicted_label() -> None:
    rows, labels = load_breast_cancer(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(rows, labels)
    outputs = first_output_per_row(export_onnx(pipeline, rows.shape[1], "classification"), rows)
    assert outputs.shape == (len(rows),) and set(np.unique(outputs)) == {0.0, 1.0}
    assert np.mean(outputs == pipeline.predict(rows.astype(np.float32))) > 0.99


def test_a_regressors_reference_output_is_narrower_than_its_labels() -> None:
    rows, target = load_diabetes(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LinearRegression()).fit(rows, target)
    outputs = first_output_per_row(export_onnx(pipeline, rows.shape[1], "regression"), rows)
    np.testing.assert_allclose(outputs, pipeline.predict(rows), rtol=1e-3)
    assert outputs.std() < 0.8 * target.std()  # why labels are the wrong reference for predictions
