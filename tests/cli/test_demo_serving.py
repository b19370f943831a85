"""How `cascade demo` (and the bench) tell that a model version is serving: the SDK's ServingClient
against a real serving process over a fake registry (tests/serving's rig), holding versions 1 and 2
of MODEL with version 1 the champion."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cascade.cli.demo import model_serves, serves
from cascade.client.channels import PLAINTEXT
from cascade.client.serving import ServingClient
from tests.sdk.test_serving_client import client, served
from tests.serving.conftest import dataset, models, module_registry
from tests.serving.harness import ServingProcess
from tests.serving.support import MODEL, Dataset, TrainedModel

# The SDK's serving tests' rig: a real serving process over a fake registry, and a ServingClient.
__all__ = ["client", "dataset", "models", "module_registry", "served"]

pytestmark = pytest.mark.slow


async def test_the_champion_version_serves_and_others_do_not(client: ServingClient) -> None:
    assert await model_serves(client, MODEL, "1")
    assert not await model_serves(client, MODEL, "99")
    assert not await model_serves(client, "no_such_model", "1")


async def test_the_demo_reads_the_labels_of_the_version_that_answered(
    client: ServingClient, dataset: Dataset, models: dict[int, TrainedModel]
) -> None:
    rows = np.asarray(dataset.rows[:5], dtype=np.float32)

    prediction = await client.predict(MODEL, rows, outputs=["label"])

    assert prediction.version == "1"
    np.testing.assert_array_equal(prediction["label"].reshape(-1), models[1].labels(rows).reshape(-1))


async def test_the_blocking_check_answers_too_and_a_serving_that_is_not_there_is_not_serving(
    served: ServingProcess,
) -> None:
    # `serves` runs its own event loop, as the bench calls it: off this test's loop.
    assert await asyncio.to_thread(serves, served.url, PLAINTEXT, MODEL, "1")
    assert not await asyncio.to_thread(serves, "127.0.0.1:1", PLAINTEXT, MODEL, "1")
