"""The monitor's gRPC clients for closing the loop: it runs a champion's ONNX artifact on its
reference rows (the prediction's reference), asks ingest whether a dataset has a version newer than
the champion's, and sends labelled production rows to ingest as a feedback batch, through the same
UploadBatch (and so the same validation, versioning and lineage) as any other batch."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pandas as pd

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.clients import download_artifact, unavailable_as_retryable
from cascade.grpc_io import CHUNK_SIZE, open_channel
from cascade.services.monitor.core import Matrix
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc

__all__ = ["GrpcLoopClients", "first_output_per_row"]


class GrpcLoopClients:
    """A `ChampionOutputs` and a `RetrainData` over the registry and ingest. Channels live between
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
        self._registry: grpc.aio.Channel | None = None
        self._ingest_channel: grpc.aio.Channel | None = None
        self._ingest: Any = None

    async def open(self) -> None:
        self._registry = open_channel(self.registry_address, self.security)
        self._ingest_channel = open_channel(self.ingest_address, self.security)
        self._ingest = ingest_pb2_grpc.IngestServiceStub(self._ingest_channel)

    async def close(self) -> None:
        for channel in (self._registry, self._ingest_channel):
            if channel is not None:
                await channel.close(None)
        self._registry = self._ingest_channel = self._ingest = None

    async def outputs(self, model: str, model_version: int, rows: Matrix) -> Matrix:
        if self._registry is None:
            raise RuntimeError("GrpcLoopClients.open() was not called")
        artifact = await download_artifact(self._registry, model, model_version)
        return await asyncio.to_thread(first_output_per_row, artifact, rows)

    async def newer_version(self, dataset: str, dataset_version: str) -> str | None:
        latest = await self._describe(dataset)
        return None if latest.version == dataset_version else str(latest.version)

    async def send_feedback(
        self, dataset: str, features: Sequence[str], rows: Matrix, labels: Matrix, source: str
    ) -> str:
        latest = await self._describe(dataset)
        data = await asyncio.to_thread(_parquet, features, rows, labels, latest.target, latest.task)
        header = ingest_pb2.BatchHeader(
            dataset=dataset, format=ingest_pb2.FILE_FORMAT_PARQUET, target=latest.target, source=source
        )

        async def requests() -> AsyncIterator[ingest_pb2.UploadBatchRequest]:
            yield ingest_pb2.UploadBatchRequest(header=header)
            for start in range(0, len(data), CHUNK_SIZE):
                yield ingest_pb2.UploadBatchRequest(chunk=data[start : start + CHUNK_SIZE])

        try:
            response = await self._ingest.UploadBatch(requests(), timeout=self.timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            raise unavailable_as_retryable(exc, f"ingest: the feedback batch of {dataset}") from exc
        # An identical batch sent before made no new version: the dataset's version already has it.
        return str(response.dataset_version or latest.version)

    async def _describe(self, dataset: str) -> ingest_pb2.DatasetVersion:
        if self._ingest is None:
            raise RuntimeError("GrpcLoopClients.open() was not called")
        request = ingest_pb2.GetDatasetVersionRequest(dataset=dataset, version="")
        try:
            info: ingest_pb2.DatasetVersion = await self._ingest.GetDatasetVersion(
                request, timeout=self.timeout_seconds
            )
        except grpc.aio.AioRpcError as exc:
            raise unavailable_as_retryable(exc, f"ingest: the latest version of {dataset}") from exc
        return info


def first_output_per_row(artifact: bytes, rows: Matrix) -> Matrix:
    """The model's first output (a classifier's label, a regressor's value) on each row, fed as
    float32 like serving feeds it. Blocking: call it in a thread."""
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: rows.astype(np.float32)}
    first = np.asarray(session.run([session.get_outputs()[0].name], feed)[0], dtype=np.float64)
    outputs: Matrix = first.reshape(len(rows), -1)[:, 0].copy()
    return outputs


def _parquet(features: Sequence[str], rows: Matrix, labels: Matrix, target: str, task: str) -> bytes:
    frame = pd.DataFrame(rows, columns=list(features))
    frame[target or "target"] = labels.astype(np.int64) if task == "classification" else labels
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
