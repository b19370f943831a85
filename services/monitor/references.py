"""Fetches a champion's reference data over gRPC: the registry says which dataset version the model
version was trained on; ingest describes that version and streams it as Parquet, which is verified
against its sha256 before use.

Failures say what retrying would do: an unreachable or overloaded dependency is `Unavailable` (the
event is redelivered); data that will never be right (no such version, a corrupt file) is permanent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pandas as pd

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.errors import FailedPrecondition, NotFound, Unavailable
from cascade.grpc_io import open_channel
from cascade.services.monitor.core import Matrix, Reference, Unmonitored
from cascade.services.monitor.store import ReferenceInfo
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc

__all__ = ["GrpcReferenceSource"]

_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


class GrpcReferenceSource:
    """A `ReferenceSource` backed by the registry and ingest services. Channels live between
    `open()` and `close()`, inside the service's event loop."""

    def __init__(
        self,
        registry_address: str,
        ingest_address: str,
        timeout_seconds: float,
        security: ClientSecurity = PLAINTEXT,
    ) -> None:
        self.registry_address = registry_address
        self.security = security
        self.ingest_address = ingest_address
        self.timeout_seconds = timeout_seconds
        self._channels: list[grpc.aio.Channel] = []
        self._registry: Any = None
        self._ingest: Any = None

    async def open(self) -> None:
        registry = open_channel(self.registry_address, self.security)
        ingest = open_channel(self.ingest_address, self.security)
        self._channels = [registry, ingest]
        self._registry = registry_pb2_grpc.RegistryServiceStub(registry)
        self._ingest = ingest_pb2_grpc.IngestServiceStub(ingest)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)
        self._channels = []

    async def fetch(self, model: str, model_version: int) -> Reference:
        if not self._channels:
            raise RuntimeError("GrpcReferenceSource.open() was not called")
        version = await self._model_version(model, model_version)
        if not version.dataset:
            raise Unmonitored(f"{model} v{model_version} was imported without a reference dataset")
        dataset = await self._dataset_version(version.dataset, version.dataset_version)
        features = list(dataset.features)
        data = await self._download(dataset.dataset, dataset.version)
        name = f"{dataset.dataset}@{dataset.version}"
        rows, target = await asyncio.to_thread(_feature_rows, data, features, name, dataset.target)
        info = ReferenceInfo(
            model, model_version, dataset.dataset, dataset.version, tuple(features), len(rows)
        )
        return Reference(
            info,
            rows,
            target=target,
            task=version.tags.get("task", "") or dataset.task,
            champion_metrics=dict(version.run.metrics),
        )

    async def _model_version(self, model: str, model_version: int) -> Any:
        request = registry_pb2.GetModelVersionRequest(model=model, version=model_version)
        async with _calling("registry", self.registry_address, f"model {model!r} v{model_version}"):
            return await self._registry.GetModelVersion(request, timeout=self.timeout_seconds)

    async def _dataset_version(self, dataset: str, version: str) -> Any:
        request = ingest_pb2.GetDatasetVersionRequest(dataset=dataset, version=version)
        async with _calling("ingest", self.ingest_address, f"dataset {dataset!r} version {version!r}"):
            return await self._ingest.GetDatasetVersion(request, timeout=self.timeout_seconds)

    async def _download(self, dataset: str, version: str) -> bytes:
        """Assemble the streamed file, checking each chunk lands where the previous one ended."""
        request = ingest_pb2.DownloadDatasetVersionRequest(dataset=dataset, version=version)
        data = bytearray()
        total_size, sha256 = -1, ""
        call = self._ingest.DownloadDatasetVersion(request, timeout=self.timeout_seconds)
        try:
            async with _calling("ingest", self.ingest_address, f"download of {dataset}@{version}"):
                async for chunk in call:
                    if chunk.offset != len(data):
                        raise FailedPrecondition(
                            f"ingest sent {dataset}@{version} out of order: "
                            f"offset {chunk.offset}, expected {len(data)}"
                        )
                    data += chunk.data
                    total_size, sha256 = chunk.total_size, chunk.sha256
        finally:
            call.cancel()  # a no-op after the last chunk; frees the stream if we stopped early
        _verify(bytes(data), total_size, sha256, f"{dataset}@{version}")
        return bytes(data)


@contextlib.asynccontextmanager
async def _calling(dependency: str, address: str, what: str) -> AsyncIterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        detail = f"{dependency} at {address}, asked for {what}: {exc.code().name} {exc.details()}"
        if exc.code() in _TRANSIENT_CODES:
            raise Unavailable(detail) from exc
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound(detail) from exc
        raise


def _verify(data: bytes, total_size: int, sha256: str, name: str) -> None:
    if total_size < 0:
        raise FailedPrecondition(f"ingest sent no data for {name}")
    if len(data) < total_size:  # the stream ended early: another try may complete it
        raise Unavailable(f"download of {name} stopped at {len(data)} of {total_size} bytes")
    actual = hashlib.sha256(data).hexdigest()
    if len(data) != total_size or actual != sha256:
        raise FailedPrecondition(
            f"download of {name} is corrupt: {len(data)} bytes with sha256 {actual}, "
            f"ingest announced {total_size} bytes with sha256 {sha256}"
        )


def _feature_rows(
    data: bytes, features: list[str], name: str, target: str = ""
) -> tuple[Matrix, Matrix | None]:
    """The complete rows of the feature columns, in `features` order, and the target column of
    those rows when the dataset has one (the reference of prediction drift)."""
    if not features:
        raise FailedPrecondition(f"dataset {name} has no features")
    try:
        frame = pd.read_parquet(io.BytesIO(data))
        rows = frame[features].to_numpy(dtype=np.float64)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files or columns
        raise FailedPrecondition(f"dataset {name} is not Parquet with columns {features}: {exc}") from exc
    complete_rows = np.isfinite(rows).all(axis=1)
    complete: Matrix = rows[complete_rows]
    if not len(complete):
        raise FailedPrecondition(f"dataset {name} has no complete rows to compare with")
    labels: Matrix | None = None
    if target and target in frame.columns:
        with contextlib.suppress(ValueError, TypeError):  # a non-numeric target: no prediction drift
            values = frame[target].to_numpy(dtype=np.float64)[complete_rows]
            labels = values if np.isfinite(values).all() else None
    return complete, labels
