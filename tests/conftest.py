"""Suite-wide fixtures. The real Kafka broker for integration tests lives in tests/integration."""

from __future__ import annotations

import pytest
from sklearn.datasets import load_breast_cancer

from cascade.services.trainer.training import TrainingResult, train


@pytest.fixture(scope="session")
def trained_breast_cancer() -> TrainingResult:
    """A real ONNX classifier (the trainer's own pipeline) on sklearn's bundled breast_cancer."""
    frame = load_breast_cancer(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    return train(frame, features, "target", "classification", seed=42, folds=3, holdout=0.2)
