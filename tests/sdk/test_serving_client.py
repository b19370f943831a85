"""The SDK's serving client against the real serving service (its own process, as in tests/serving),
with tritonclient loaded in this same process: both speak proto package `inference`, and the client
builds its messages in a private descriptor pool so that they can."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pool

from cascade.client.serving import ServingClient, _messages
from cascade.errors import InvalidArgument, NotFound
from tests.serving.harness import ServingProcess, serving_client
from tests.serving.support import MODEL, Dataset, RunningRegistry, TrainedModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def served(module_registry: RunningRegistry) -> AsyncIterator[ServingProcess]:
    async with serving_client(module_registry) as (serving, _triton):
        yield serving


@pytest.fixture
async def client(served: ServingProcess) -> AsyncIterator[ServingClient]:
    client = ServingClient(served.url)
    yield client
    await client.close()


def _frame(dataset: Dataset, rows: int = 40) -> pd.DataFrame:
    return pd.DataFrame(dataset.rows[:rows], columns=dataset.features)


async def test_metadata_names_the_features_of_the_champion(client: ServingClient, dataset: Dataset) -> None:
    served = await client.model_metadata(MODEL)
    assert served.features == tuple(dataset.features)
    assert served.feature_types == ("FP32",) * len(dataset.features)
    assert [(spec.name, spec.datatype, spec.shape) for spec in served.inputs] == [
        ("input", "FP32", (-1, len(dataset.features)))
    ]
    assert [spec.name for spec in served.outputs] == ["label", "probabilities"]


async def test_a_dataframe_is_matched_by_column_name_whatever_its_order(
    client: ServingClient, dataset: Dataset, models: dict[int, TrainedModel]
) -> None:
    frame = _frame(dataset)
    shuffled = frame[list(np.random.default_rng(7).permutation(frame.columns))]
    shuffled.insert(3, "not_a_feature", "ignored")  # extra columns are left out, even text ones
    assert list(shuffled.columns) != list(frame.columns)

    prediction = await client.predict(MODEL, shuffled)

    assert (prediction.model, prediction.version) == (MODEL, "1")
    np.testing.assert_array_equal(prediction["label"], models[1].labels(dataset.rows[:40]))
    np.testing.assert_allclose(
        prediction["probabilities"], models[1].probabilities(dataset.rows[:40]), atol=1e-5
    )


async def test_an_array_and_tritonclient_in_the_same_process_get_the_same_answers(
    client: ServingClient, served: ServingProcess, dataset: Dataset
) -> None:
    rows = dataset.rows[:25].astype(np.float64)  # converted to the model's FP32

    prediction = await client.predict(MODEL, rows, outputs=["probabilities"])

    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows.astype(np.float32))
    triton_client = triton.InferenceServerClient(served.url)
    try:
        answer = triton_client.infer(MODEL, [tensor]).as_numpy("probabilities")
    finally:
        triton_client.close()
    assert list(prediction.outputs) == ["probabilities"]
    np.testing.assert_array_equal(prediction["probabilities"], answer)
    # The client's messages are not in protobuf's default pool, where tritonclient's `inference` is.
    request_type = _messages().ModelInferRequest.DESCRIPTOR
    assert request_type.file.pool is not descriptor_pool.Default()
    assert descriptor_pool.Default().FindMessageTypeByName("inference.ModelInferRequest") is not request_type


async def test_a_missing_column_is_named(client: ServingClient, dataset: Dataset) -> None:
    frame = _frame(dataset).drop(columns=[dataset.features[4], dataset.features[9]])
    with pytest.raises(InvalidArgument) as raised:
        await client.predict(MODEL, frame)
    assert repr(dataset.features[4]) in str(raised.value)
    assert repr(dataset.features[9]) in str(raised.value)


async def test_a_text_feature_column_is_refused_by_name(client: ServingClient, dataset: Dataset) -> None:
    frame = _frame(dataset)
    frame[dataset.features[0]] = "high"
    with pytest.raises(InvalidArgument, match=dataset.features[0]):
        await client.predict(MODEL, frame)


async def test_a_version_without_feature_names_takes_an_array_but_not_a_dataframe(
    client: ServingClient,
    served: ServingProcess,
    module_registry: RunningRegistry,
    dataset: Dataset,
    models: dict[int, TrainedModel],
) -> None:
    module_registry.fake.promote(MODEL, 2)  # version 2 carries no "features" tag
    await served.promote(MODEL, 2)
    try:
        with pytest.raises(InvalidArgument, match="does not name its features"):
            await client.predict(MODEL, _frame(dataset), version="2")
        prediction = await client.predict(MODEL, dataset.rows[:10], version="2")
        assert prediction.version == "2"
        np.testing.assert_array_equal(prediction["label"], models[2].labels(dataset.rows[:10]))
    finally:
        module_registry.fake.promote(MODEL, 1)
        await served.promote(MODEL, 1)


async def test_unknown_model_is_not_found_and_a_wrong_width_is_invalid(
    client: ServingClient, dataset: Dataset
) -> None:
    with pytest.raises(NotFound):
        await client.model_metadata("no_such_model")
    with pytest.raises(InvalidArgument, match="shape"):
        await client.predict(MODEL, dataset.rows[:5, :7])
    assert await client.model_ready(MODEL)
    assert not await client.model_ready(MODEL, "99")
