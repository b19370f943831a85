"""The trainer's core against in-process fakes of the registry and ingest, over real gRPC: a retrain
happens only when it can learn something, and a byte-identical artifact makes no new version."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer

from cascade.client.calls import RemoteService
from cascade.client.ingest import IngestClient
from cascade.client.registry import RegistryClient
from cascade.errors import InvalidArgument
from cascade.events import DriftDetected, ModelTrained, TrainingRequested
from cascade.services.trainer.core import ImportRequest, TrainerCore
from cascade.services.trainer.settings import TrainerSettings
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc

pytestmark = pytest.mark.slow  # each test trains a model or two

MODEL = "bc"
VERSION = "a" * 64


class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        frame = load_breast_cancer(as_frame=True).frame
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.data = buffer.getvalue()
        self.features = [c for c in frame.columns if c != "target"]
        self.latest = VERSION

    async def GetDatasetVersion(self, request: Any, context: Any) -> ingest_pb2.DatasetVersion:
        return ingest_pb2.DatasetVersion(
            dataset=MODEL,
            version=request.version or self.latest,
            features=self.features,
            target="target",
            task="classification",
            rows=569,
        )

    async def DownloadDatasetVersion(self, request: Any, context: Any) -> AsyncIterator[ingest_pb2.DataChunk]:
        yield ingest_pb2.DataChunk(
            data=self.data,
            offset=0,
            total_size=len(self.data),
            sha256=hashlib.sha256(self.data).hexdigest(),
        )


class FakeRegistry(registry_pb2_grpc.RegistryServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.versions: list[registry_pb2.ModelVersion] = []
        self.champion = 0
        self.tags_set: list[dict[str, str]] = []

    async def GetTrainingSpec(self, request: Any, context: Any) -> registry_pb2.TrainingSpec:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no spec")

    async def GetModelVersion(self, request: Any, context: Any) -> registry_pb2.ModelVersion:
        selector = request.WhichOneof("selector")
        for version in self.versions:
            if (
                (selector == "version" and version.version == request.version)
                or (selector == "idempotency_key" and version.idempotency_key == request.idempotency_key)
                or (selector == "alias" and request.alias == "champion" and version.version == self.champion)
            ):
                return version
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such version")

    async def ListModelVersions(self, request: Any, context: Any) -> registry_pb2.ListModelVersionsResponse:
        return registry_pb2.ListModelVersionsResponse(versions=self.versions)

    async def CreateModelVersion(self, requests: Any, context: Any) -> registry_pb2.ModelVersion:
        header, artifact = None, b""
        async for request in requests:
            if request.HasField("header"):
                header = request.header
            else:
                artifact += request.chunk
        assert header is not None
        version = registry_pb2.ModelVersion(
            model=header.model,
            version=len(self.versions) + 1,
            dataset=header.dataset,
            dataset_version=header.dataset_version,
            idempotency_key=header.idempotency_key,
            artifact_sha256=hashlib.sha256(artifact).hexdigest(),
            run=header.run,
            tags=header.tags,
        )
        self.versions.append(version)
        return version

    async def UpdateModelVersion(self, request: Any, context: Any) -> registry_pb2.ModelVersion:
        self.tags_set.append(dict(request.set_tags))
        return self.versions[request.version - 1]


@pytest.fixture
async def rig() -> AsyncIterator[tuple[TrainerCore, FakeRegistry, FakeIngest, list[ModelTrained]]]:
    registry, ingest = FakeRegistry(), FakeIngest()
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, server)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    trained: list[ModelTrained] = []

    async def emit(event: ModelTrained) -> None:
        trained.append(event)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        ingest_client = IngestClient(RemoteService("ingest", channel))
        registry_client = RegistryClient(RemoteService("registry", channel))
        yield TrainerCore(TrainerSettings(), ingest_client, registry_client, emit), registry, ingest, trained
    await server.stop(None)


def drift(action: str) -> DriftDetected:
    return DriftDetected(
        source="test",
        subject=MODEL,
        model=MODEL,
        model_version=1,
        kind="drift",
        summary="s",
        report={},
        action=action,  # type: ignore[arg-type]
    )


async def test_a_rerun_that_reproduces_the_champion_makes_no_version(rig: Any) -> None:
    core, registry, _, trained = rig
    await core.on_training_requested(TrainingRequested(source="test", subject=MODEL, model=MODEL, actor="a"))
    assert [event.model_version for event in trained] == [1]
    registry.champion = 1

    again = TrainingRequested(source="test", subject=MODEL, model=MODEL, actor="b", reason="refresh")
    await core.on_training_requested(again)

    assert len(registry.versions) == 1 and len(trained) == 1  # nothing new for the validator
    [tags] = registry.tags_set
    [(name, record)] = tags.items()
    assert name.startswith("rerun:") and again.id in record and VERSION in record


async def test_drift_without_a_newer_dataset_version_trains_nothing(rig: Any) -> None:
    core, registry, _, trained = rig
    await core.on_training_requested(TrainingRequested(source="test", subject=MODEL, model=MODEL))
    registry.champion = 1
    for action in ("retrain", "no_new_data", "feedback"):
        await core.on_drift_detected(drift(action))
    assert len(registry.versions) == 1 and len(trained) == 1 and not registry.tags_set


async def test_drift_with_a_newer_dataset_version_retrains_on_it(rig: Any) -> None:
    core, registry, ingest, trained = rig
    await core.on_training_requested(TrainingRequested(source="test", subject=MODEL, model=MODEL))
    registry.champion = 1
    ingest.latest = "b" * 64  # the same rows here, so the artifact is the champion's again
    await core.on_drift_detected(drift("retrain"))
    [tags] = registry.tags_set  # it trained on the newer version, and found nothing new
    assert "b" * 64 in next(iter(tags.values())) and len(trained) == 1


def _xgboost_json(tmp_path: Path) -> bytes:
    """An XGBoost model trained outside Cascade, saved as XGBoost saves it."""
    frame = load_breast_cancer(as_frame=True).frame
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3)
    model.fit(frame.drop(columns="target"), frame["target"])
    path = tmp_path / "model.json"
    model.save_model(path)
    return path.read_bytes()


async def test_an_import_with_a_reference_is_uploaded_tagged_and_announced(rig: Any, tmp_path: Path) -> None:
    core, registry, _, trained = rig
    request = ImportRequest(
        model=MODEL, model_format="xgboost", dataset=MODEL, actor="ann", reason="notebook"
    )
    data = _xgboost_json(tmp_path)
    outcome = await core.import_model(request, data)

    assert outcome.model_version == 1 and outcome.monitored and outcome.parity_rows > 0
    [version] = registry.versions
    assert version.dataset == MODEL and version.dataset_version == VERSION  # the latest, resolved
    tags = dict(version.tags)
    assert tags["source"] == "imported" and tags["format"] == "xgboost" and tags["monitoring"] == "monitored"
    assert tags["task"] == "classification" and tags["target"] == "target"
    assert json.loads(tags["features"]) == load_breast_cancer(as_frame=True).feature_names.tolist()
    assert (
        len(json.loads(tags["parity_reference"])["rows"]) == 16
    )  # what the validator's parity gate rechecks
    [announced] = trained
    assert (announced.model_version, announced.dataset, announced.dataset_version) == (1, MODEL, VERSION)

    # The same file against the same reference: the version found by its key, announced again.
    again = await core.import_model(request, data)
    assert again.model_version == 1 and len(registry.versions) == 1 and len(trained) == 2


async def test_an_import_without_a_reference_is_unmonitored_and_not_announced(
    rig: Any, tmp_path: Path
) -> None:
    core, registry, _, trained = rig
    frame = load_breast_cancer(as_frame=True).frame
    features = tuple(c for c in frame.columns if c != "target")
    request = ImportRequest(
        model=MODEL,
        model_format="xgboost",
        features=features,
        task="classification",
        parity_rows_csv=frame.head(40).to_csv(index=False).encode(),
    )
    outcome = await core.import_model(request, _xgboost_json(tmp_path))
    assert not outcome.monitored and outcome.parity_rows == 40
    [version] = registry.versions
    assert version.tags["monitoring"] == "unmonitored" and version.dataset == ""
    assert not trained  # nothing to validate it on

    for missing, reason in (
        (dict(features=()), "features are required"),
        (dict(parity_rows_csv=b""), "parity rows are required"),
        (dict(task="ranking"), "task must be classification or regression"),
    ):
        with pytest.raises(InvalidArgument, match=reason):
            await core.import_model(dataclasses.replace(request, **missing), b"{}")
