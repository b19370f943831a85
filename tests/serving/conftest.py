"""Fixtures for serving's tests; see support.py for what must never be imported here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from .support import Dataset, RunningRegistry, TrainedModel, running_registry, train


@pytest.fixture(scope="session")
def dataset() -> Dataset:
    data = load_breast_cancer()
    return Dataset(data.data.astype(np.float32), [str(name) for name in data.feature_names])


@pytest.fixture(scope="session")
def models(dataset: Dataset) -> dict[int, TrainedModel]:
    """Two versions whose probabilities differ, so an answer shows which version gave it."""
    labels = load_breast_cancer().target
    return {1: train(dataset.rows, labels, 1.0), 2: train(dataset.rows, labels, 0.001)}


@pytest.fixture
async def registry(models: dict[int, TrainedModel], dataset: Dataset) -> AsyncIterator[RunningRegistry]:
    async with running_registry(models, dataset) as running:
        yield running


@pytest.fixture(scope="module")
async def module_registry(
    models: dict[int, TrainedModel], dataset: Dataset
) -> AsyncIterator[RunningRegistry]:
    """One registry for a whole module of tests that leave it as they found it."""
    async with running_registry(models, dataset) as running:
        yield running
