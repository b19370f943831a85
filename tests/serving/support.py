"""Test support for serving: real ONNX models, and a fake registry speaking the real protocol.

Nothing here may import `cascade.stubs.inference` (or anything that imports it, like
`cascade.services.serving.inference` or `cascade.services.serving.app`): the tritonclient tests
share this process, and tritonclient registers the same proto package `inference`. The server
under test runs in a subprocess instead (see serving_process.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc as pb_grpc

MODEL = "cancer"
CHUNK = 256  # small, so every download takes several chunks


@dataclass(frozen=True)
class TrainedModel:
    estimator: LogisticRegression
    onnx: bytes

    def labels(self, rows: np.ndarray) -> np.ndarray:
        return self.estimator.predict(rows.astype(np.float32))

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(rows.astype(np.float32))


@dataclass(frozen=True)
class Dataset:
    rows: np.ndarray  # float32, [569, 30]
    features: list[str]


def train(rows: np.ndarray, labels: np.ndarray, regularisation: float) -> TrainedModel:
    estimator = LogisticRegression(C=regularisation, max_iter=10000).fit(rows, labels)
    onnx = convert_sklearn(
        estimator,
        initial_types=[("input", FloatTensorType([None, rows.shape[1]]))],
        options={id(estimator): {"zipmap": False}},
    )
    return TrainedModel(estimator, onnx.SerializeToString())


class FakeRegistry(pb_grpc.RegistryServiceServicer):
    """The registry's read side, in memory: versions, aliases, chunked downloads."""

    def __init__(self) -> None:
        self.artifacts: dict[tuple[str, int], bytes] = {}
        self.tags: dict[tuple[str, int], dict[str, str]] = {}
        self.aliases: dict[str, dict[str, int]] = {}
        self.recorded_sha256: dict[tuple[str, int], str] = {}  # overrides, to simulate corruption
        self.refused_downloads: dict[tuple[str, int], grpc.StatusCode] = {}  # e.g. the artifact is gone
        self.downloads = 0

    def add(self, model: str, version: int, onnx: bytes, tags: dict[str, str] | None = None) -> None:
        self.artifacts[model, version] = onnx
        self.tags[model, version] = tags or {}
        self.aliases.setdefault(model, {})

    def promote(self, model: str, version: int) -> None:
        self.aliases[model]["champion"] = version

    def _sha256(self, model: str, version: int) -> str:
        return self.recorded_sha256.get(
            (model, version), hashlib.sha256(self.artifacts[model, version]).hexdigest()
        )

    def _latest(self, model: str) -> int:
        return max(version for name, version in self.artifacts if name == model)

    async def GetModelVersion(self, request: Any, context: Any) -> pb.ModelVersion:
        version = request.version
        if request.WhichOneof("selector") == "alias":
            version = self.aliases.get(request.model, {}).get(request.alias, 0)
        if (request.model, version) not in self.artifacts:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no version of {request.model} matches")
        return pb.ModelVersion(
            model=request.model,
            version=version,
            status=pb.VERSION_STATUS_READY,
            artifact_sha256=self._sha256(request.model, version),
            artifact_size=len(self.artifacts[request.model, version]),
            tags=self.tags[request.model, version],
        )

    async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.Model(name=name, latest_version=self._latest(name), aliases=aliases)
                for name, aliases in self.aliases.items()
            ]
        )

    async def DownloadArtifact(self, request: Any, context: Any) -> AsyncIterator[pb.ArtifactChunk]:
        self.downloads += 1
        refusal = self.refused_downloads.get((request.model, request.version))
        if refusal is not None:
            await context.abort(refusal, f"the artifact of {request.model} v{request.version} is refused")
        data = self.artifacts[request.model, request.version]
        for offset in range(request.offset, len(data), CHUNK):
            yield pb.ArtifactChunk(
                data=data[offset : offset + CHUNK],
                offset=offset,
                total_size=len(data),
                sha256=self._sha256(request.model, request.version),
            )


@dataclass
class RunningRegistry:
    fake: FakeRegistry
    address: str


@contextlib.asynccontextmanager
async def running_registry(
    models: dict[int, TrainedModel], dataset: Dataset
) -> AsyncIterator[RunningRegistry]:
    """A fake registry holding versions 1 and 2 of MODEL, version 1 the champion and tagged with
    its feature names."""
    fake = FakeRegistry()
    fake.add(MODEL, 1, models[1].onnx, {"features": json.dumps(dataset.features)})
    fake.add(MODEL, 2, models[2].onnx)
    fake.promote(MODEL, 1)
    server = grpc.aio.server()
    pb_grpc.add_RegistryServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield RunningRegistry(fake, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)
