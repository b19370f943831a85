"""The typed client of the trainer: ask for a training run, and import a model trained elsewhere."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal

from cascade.client.base import ServiceClient
from cascade.client.calls import RemoteService, call
from cascade.client.records import ImportResult
from cascade.errors import InvalidArgument
from cascade.grpc_io import file_chunks
from cascade.stubs.cascade.trainer.v1 import trainer_pb2 as pb
from cascade.stubs.cascade.trainer.v1 import trainer_pb2_grpc as pb_grpc

__all__ = ["ModelFormat", "TrainerClient"]

ModelFormat = Literal["onnx", "sklearn", "xgboost", "lightgbm"]
_FORMATS: dict[ModelFormat, pb.ModelFormat.ValueType] = {
    "onnx": pb.MODEL_FORMAT_ONNX,
    "sklearn": pb.MODEL_FORMAT_SKLEARN_PICKLE,
    "xgboost": pb.MODEL_FORMAT_XGBOOST,
    "lightgbm": pb.MODEL_FORMAT_LIGHTGBM,
}


class TrainerClient(ServiceClient):
    """The trainer's RPCs as async methods; failures are Cascade errors naming the trainer."""

    SERVICE = "trainer"

    def __init__(self, service: RemoteService, *, timeout: float | None = None) -> None:
        super().__init__(service, timeout=timeout)
        self._stub = pb_grpc.TrainerServiceStub(service.channel)

    async def request_training(self, model: str, *, actor: str = "", reason: str = "") -> str:
        """Ask for a training run of `model` on its dataset's latest version; the request's id."""
        request = pb.RequestTrainingRequest(model=model, actor=actor, reason=reason)
        response = await call(
            self.service,
            f"requesting training of {model}",
            lambda: self._stub.RequestTraining(request, timeout=self.timeout),
        )
        return response.request_id

    async def import_model(
        self,
        name: str,
        file: Path,
        *,
        format: ModelFormat,
        features: Sequence[str],
        task: str,
        dataset: str = "",
        dataset_version: str = "",
        parity_rows_csv: bytes = b"",
        actor: str = "",
        reason: str = "",
    ) -> ImportResult:
        """Register a model trained elsewhere as a new version of `name`, after a parity check of
        its ONNX form. With `dataset` (its latest version unless `dataset_version`) it is gated
        and monitored like a trained one; with only `parity_rows_csv` it is served unmonitored."""
        if format not in _FORMATS:
            raise InvalidArgument(f"unknown model format {format!r}; known: {list(_FORMATS)}")
        if not file.is_file():  # noqa: ASYNC240 - a cheap local check, once per import
            raise InvalidArgument(f"no such file: {file}")
        header = pb.ImportHeader(
            model=name,
            format=_FORMATS[format],
            features=list(features),
            task=task,
            dataset=dataset,
            dataset_version=dataset_version,
            parity_rows_csv=parity_rows_csv,
            actor=actor,
            reason=reason,
        )
        response = await call(
            self.service,
            f"importing {file.name} as {name}",
            lambda: self._stub.ImportModel(_import_requests(header, file), timeout=self.timeout),
        )
        return ImportResult.of(response)


async def _import_requests(header: pb.ImportHeader, file: Path) -> AsyncIterator[pb.ImportModelRequest]:
    yield pb.ImportModelRequest(header=header)
    for _offset, data in file_chunks(file):
        yield pb.ImportModelRequest(chunk=data)
