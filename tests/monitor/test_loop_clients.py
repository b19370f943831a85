"""The prediction's reference is computed by running the champion's real ONNX artifact, as serving
runs it: float32 rows in, one output per row out. The loop's clients fetch that artifact, read
ingest's latest version and send feedback batches through the typed clients, against fake registry
and ingest servicers over loopback gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cascade.errors import NotFound, Unavailable
from cascade.services.monitor.loop_clients import GrpcLoopClients, first_output_per_row
from cascade.services.trainer.training import export_onnx
from cascade.stubs.cascade.ingest.v1 import ingest_pb2

from .support import (
    DATASET,
    DATASET_VERSION,
    FEATURES,
    MODEL,
    Dependencies,
    normal_rows,
    parquet_of,
    unused_address,
)


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


@pytest.fixture
async def clients(dependencies: Dependencies) -> AsyncIterator[GrpcLoopClients]:
    clients = GrpcLoopClients(dependencies.address, dependencies.address, timeout_seconds=5.0)
    await clients.open()
    yield clients
    await clients.close()


async def test_champion_outputs_come_from_its_downloaded_artifact(
    clients: GrpcLoopClients, dependencies: Dependencies
) -> None:
    rows = normal_rows(200, seed=2)
    labels = (rows[:, 0] + rows[:, 1] > 0).astype(np.int64)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(rows, labels)
    dependencies.registry.artifacts[MODEL, 1] = export_onnx(pipeline, len(FEATURES), "classification")

    outputs = await clients.outputs(MODEL, 1, rows)

    assert np.mean(outputs == pipeline.predict(rows.astype(np.float32))) > 0.99


async def test_the_champions_outputs_and_explanation_download_its_artifact_once(
    clients: GrpcLoopClients, dependencies: Dependencies
) -> None:
    rows = normal_rows(50, seed=3)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(rows, rows[:, 0] > 0)
    artifact = export_onnx(pipeline, len(FEATURES), "classification")
    dependencies.registry.artifacts[MODEL, 1] = artifact

    await clients.outputs(MODEL, 1, rows)
    assert await clients.artifact(MODEL, 1) == artifact
    assert dependencies.registry.downloads == 1
    dependencies.registry.artifacts[MODEL, 2] = b"another version"
    assert await clients.artifact(MODEL, 2) == b"another version"  # only the latest one is kept
    assert dependencies.registry.downloads == 2


async def test_an_unknown_artifact_is_not_found(clients: GrpcLoopClients) -> None:
    with pytest.raises(NotFound, match="registry at"):
        await clients.outputs(MODEL, 7, normal_rows(3))


async def test_a_newer_dataset_version_is_named(clients: GrpcLoopClients, dependencies: Dependencies) -> None:
    assert await clients.newer_version(DATASET, DATASET_VERSION) is None

    dependencies.ingest.add(DATASET, "v-newer", parquet_of(normal_rows(20)), FEATURES)

    assert await clients.newer_version(DATASET, DATASET_VERSION) == "v-newer"


async def test_feedback_goes_to_ingest_as_a_parquet_batch(
    clients: GrpcLoopClients, dependencies: Dependencies
) -> None:
    rows, labels = normal_rows(60, seed=4), np.arange(60, dtype=np.float64)

    version = await clients.send_feedback(DATASET, FEATURES, rows, labels, source="feedback:event-1")

    (batch,) = dependencies.ingest.batches
    assert version == "v-feedback-1"
    assert (batch.header.dataset, batch.header.target, batch.header.source) == (
        DATASET,
        "target",
        "feedback:event-1",
    )
    assert batch.header.format == ingest_pb2.FILE_FORMAT_PARQUET
    np.testing.assert_array_equal(batch.frame[FEATURES].to_numpy(), rows)
    np.testing.assert_array_equal(batch.frame["target"].to_numpy(), labels)


async def test_an_unreachable_ingest_is_unavailable(dependencies: Dependencies) -> None:
    clients = GrpcLoopClients(dependencies.address, unused_address(), timeout_seconds=5.0)
    await clients.open()
    try:
        with pytest.raises(Unavailable, match="ingest at"):
            await clients.send_feedback(DATASET, FEATURES, normal_rows(3), np.zeros(3), source="feedback:x")
    finally:
        await clients.close()
