"""Client calls that several services make: fetching a dataset version from ingest and an artifact
from the registry, both as verified byte streams."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterable
from typing import Protocol

import grpc
import pandas as pd

from cascade.errors import FailedPrecondition, Unavailable
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc

__all__ = ["download_artifact", "fetch_dataset", "unavailable_as_retryable"]


class _Chunk(Protocol):
    data: bytes
    sha256: str


async def _assemble(stream: AsyncIterable[_Chunk], what: str) -> bytes:
    buffer = bytearray()
    expected = ""
    async for chunk in stream:
        buffer += chunk.data
        expected = chunk.sha256
    data = bytes(buffer)
    # Hashing megabytes blocks for a while: off the event loop, so health checks go on meanwhile.
    if await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest()) != expected:
        raise FailedPrecondition(f"{what} arrived corrupt: sha256 mismatch")
    return data


def unavailable_as_retryable(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    """UNAVAILABLE and DEADLINE_EXCEEDED mean "try again later"; other codes keep their meaning."""
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"{what}: {exc.details()}")
    return exc


async def fetch_dataset(
    channel: grpc.aio.Channel,
    dataset: str,
    version: str = "",
    *,
    row_start: int = 0,
    row_end: int = 0,
    last_batches: int = 0,
) -> tuple[ingest_pb2.DatasetVersion, pd.DataFrame]:
    """A dataset version's description and its rows, from ingest: all of them, or a slice (rows
    [row_start, row_end), row_end 0 meaning the last; or the rows its latest `last_batches` added)."""
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    try:
        info = await stub.GetDatasetVersion(
            ingest_pb2.GetDatasetVersionRequest(dataset=dataset, version=version)
        )
        data = await _assemble(
            stub.DownloadDatasetVersion(
                ingest_pb2.DownloadDatasetVersionRequest(
                    dataset=dataset,
                    version=info.version,
                    row_start=row_start,
                    row_end=row_end,
                    last_batches=last_batches,
                )
            ),
            f"dataset {dataset}@{info.version[:12]}",
        )
    except grpc.aio.AioRpcError as exc:
        raise unavailable_as_retryable(exc, f"ingest: fetching {dataset}@{version or 'latest'}") from exc
    return info, await asyncio.to_thread(pd.read_parquet, io.BytesIO(data))


async def download_artifact(channel: grpc.aio.Channel, model: str, version: int) -> bytes:
    """A model version's ONNX bytes, from the registry, verified against their sha256."""
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    try:
        return await _assemble(
            stub.DownloadArtifact(registry_pb2.DownloadArtifactRequest(model=model, version=version)),
            f"artifact of {model} v{version}",
        )
    except grpc.aio.AioRpcError as exc:
        raise unavailable_as_retryable(exc, f"registry: downloading {model} v{version}") from exc
