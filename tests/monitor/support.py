"""Helpers of the monitor tests: reference data, and in-process fake registry and ingest servers
built on the real stubs, so the reference fetch runs real gRPC over loopback."""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pandas as pd

from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc

FEATURES = ["alpha", "beta", "gamma", "delta"]
MODEL = "churn"
DATASET = "customers"
DATASET_VERSION = "v" + "0" * 63


def normal_rows(rows: int, shift: float = 0.0, seed: int = 0) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Standard-normal rows of len(FEATURES) columns, optionally shifted by `shift` standard deviations."""
    return np.random.default_rng(seed).normal(loc=shift, size=(rows, len(FEATURES)))


def unused_address() -> str:
    """An address on which nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def parquet_of(rows: np.ndarray[Any, np.dtype[np.float64]]) -> bytes:
    frame = pd.DataFrame(rows, columns=FEATURES)
    frame["target"] = (rows[:, 0] > 0).astype("float64")
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


class FakeRegistry(registry_pb2_grpc.RegistryServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], registry_pb2.ModelVersion] = {}
        self.artifacts: dict[tuple[str, int], bytes] = {}
        self.calls = 0
        self.downloads = 0

    def add(self, model: str, version: int, dataset: str, dataset_version: str) -> None:
        self.versions[(model, version)] = registry_pb2.ModelVersion(
            model=model, version=version, dataset=dataset, dataset_version=dataset_version
        )

    async def GetModelVersion(
        self, request: registry_pb2.GetModelVersionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.ModelVersion:
        self.calls += 1
        found = self.versions.get((request.model, request.version))
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no version {request.version} of {request.model}")
        return found

    async def DownloadArtifact(
        self, request: registry_pb2.DownloadArtifactRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[registry_pb2.ArtifactChunk]:
        self.downloads += 1
        data = self.artifacts.get((request.model, request.version))
        if data is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no artifact of {request.model} v{request.version}"
            )
        assert data is not None
        digest = hashlib.sha256(data).hexdigest()
        for offset in range(request.offset, len(data), 1000):
            yield registry_pb2.ArtifactChunk(
                data=data[offset : offset + 1000], offset=offset, total_size=len(data), sha256=digest
            )


@dataclass
class StoredVersion:
    data: bytes
    features: list[str]
    announced_sha256: str = ""


@dataclass
class ReceivedBatch:
    header: ingest_pb2.BatchHeader
    frame: pd.DataFrame


@dataclass
class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):  # type: ignore[misc]
    versions: dict[tuple[str, str], StoredVersion] = field(default_factory=dict)
    chunk_size: int = 1000  # small, so a download takes several chunks
    batches: list[ReceivedBatch] = field(default_factory=list)

    def add(self, dataset: str, version: str, data: bytes, features: list[str], sha256: str = "") -> None:
        self.versions[(dataset, version)] = StoredVersion(
            data, features, sha256 or hashlib.sha256(data).hexdigest()
        )

    async def GetDatasetVersion(
        self, request: ingest_pb2.GetDatasetVersionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.DatasetVersion:
        version = request.version or self._latest(request.dataset)
        stored = self.versions.get((request.dataset, version))
        if stored is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no version {request.version} of {request.dataset}"
            )
        return ingest_pb2.DatasetVersion(
            dataset=request.dataset,
            version=version,
            features=stored.features,
            target="target",
            size_bytes=len(stored.data),
        )

    async def DownloadDatasetVersion(
        self, request: ingest_pb2.DownloadDatasetVersionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ingest_pb2.DataChunk]:
        stored = self.versions[(request.dataset, request.version)]
        for offset in range(request.offset, len(stored.data), self.chunk_size):
            yield ingest_pb2.DataChunk(
                data=stored.data[offset : offset + self.chunk_size],
                offset=offset,
                total_size=len(stored.data),
                sha256=stored.announced_sha256,
            )

    def _latest(self, dataset: str) -> str:
        """The version added last (an empty request version asks for the latest)."""
        return next((v for d, v in reversed(self.versions) if d == dataset), "")

    async def UploadBatch(
        self,
        requests: AsyncIterator[ingest_pb2.UploadBatchRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ingest_pb2.UploadBatchResponse:
        header, data = ingest_pb2.BatchHeader(), bytearray()
        async for request in requests:
            if request.HasField("header"):
                header = request.header
            else:
                data += request.chunk
        self.batches.append(ReceivedBatch(header, pd.read_parquet(io.BytesIO(bytes(data)))))
        return ingest_pb2.UploadBatchResponse(
            batch_id=f"batch-{len(self.batches)}",
            dataset_version=f"v-feedback-{len(self.batches)}",
            created=True,
        )


@dataclass
class Dependencies:
    """The fake registry and ingest, served together on one loopback port."""

    registry: FakeRegistry
    ingest: FakeIngest
    address: str


@contextlib.asynccontextmanager
async def serve_dependencies() -> AsyncIterator[Dependencies]:
    """A fake registry knowing model v1, and a fake ingest holding the dataset it was trained on."""
    registry, ingest = FakeRegistry(), FakeIngest()
    registry.add(MODEL, 1, DATASET, DATASET_VERSION)
    ingest.add(DATASET, DATASET_VERSION, parquet_of(normal_rows(600, seed=1)), FEATURES)
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, server)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Dependencies(registry, ingest, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)
