"""Suite-wide fixtures. The real Kafka broker for integration tests lives in tests/integration."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sklearn.datasets import load_breast_cancer

from cascade.services.trainer.training import TrainingResult, train


@pytest.fixture(scope="session")
def trained_breast_cancer() -> TrainingResult:
    """A real ONNX classifier (the trainer's own pipeline) on sklearn's bundled breast_cancer."""
    frame = load_breast_cancer(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    return train(frame, features, "target", "classification", seed=42, folds=3, holdout=0.2)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server from the `pgserver` wheel, once per run: its admin URL (over its
    Unix socket). The stores that run on SQLite or PostgreSQL (registry, ingest, monitor) test
    both, each test on a database of its own (tests/databases.py)."""
    pgserver = pytest.importorskip("pgserver")
    root = tmp_path_factory.mktemp("pg")
    server: Any = pgserver.get_server(root, cleanup_mode="stop")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}"
    finally:
        server.cleanup()
