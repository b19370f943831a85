"""Open Inference Protocol (KServe v2) calls to the serving service, for `cascade demo`.

Kept apart because it imports `cascade.stubs.inference`: tritonclient defines the same protobuf
package `inference`, which protobuf refuses to load twice in one process, so only modules that run
in their own process (the demo) may import this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

import grpc
import numpy as np
import numpy.typing as npt

from cascade.cli.client import rpc_failure
from cascade.cli.errors import ClientError
from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.grpc_io import open_blocking_channel
from cascade.stubs.inference import grpc_service_pb2 as pb
from cascade.stubs.inference import grpc_service_pb2_grpc as pb_grpc

__all__ = ["InferenceClient", "Prediction"]

# KServe v2 datatypes the demo's models answer with, as little-endian numpy types.
_DTYPES: dict[str, str] = {
    "BOOL": "?",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP32": "<f4",
    "FP64": "<f8",
}
_CALL_TIMEOUT = 5.0


@dataclass(frozen=True)
class Prediction:
    model_version: str
    labels: npt.NDArray[np.int64]
    # One row per input row, one column per class.
    probabilities: npt.NDArray[np.float64]


class InferenceClient:
    """A channel to serving's GRPCInferenceService; use as a context manager."""

    def __init__(self, address: str, security: ClientSecurity = PLAINTEXT) -> None:
        self.address = address
        self._channel = open_blocking_channel(address, security)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._channel.close()

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether serving has this model (version "" means the one it serves) loaded and ready."""
        response = self._stub.ModelReady(
            pb.ModelReadyRequest(name=name, version=version), timeout=_CALL_TIMEOUT
        )
        return bool(response.ready)

    def model_versions(self, name: str) -> list[str]:
        response = self._stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=_CALL_TIMEOUT)
        return list(response.versions)

    def serves(self, name: str, version: str) -> bool:
        """Whether `version` is ready, asked directly or as the listed, ready current version.
        Any error (serving still starting, model not loaded yet) counts as not yet."""
        try:
            if self.model_ready(name, version):
                return True
            return version in self.model_versions(name) and self.model_ready(name)
        except grpc.RpcError:
            return False

    def predict(self, name: str, features: npt.NDArray[np.float32], version: str = "") -> Prediction:
        """ModelInfer with one FP32 "input" tensor of shape [rows, features] sent as raw bytes."""
        rows = np.ascontiguousarray(features, dtype="<f4")
        request = pb.ModelInferRequest(
            model_name=name,
            model_version=version,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(rows.shape))
            ],
            outputs=[
                pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in ("label", "probabilities")
            ],
            raw_input_contents=[rows.tobytes()],
        )
        try:
            response = self._stub.ModelInfer(request, timeout=_CALL_TIMEOUT)
        except grpc.RpcError as error:
            raise rpc_failure("serving", self.address, error) from None
        return Prediction(
            model_version=response.model_version,
            labels=_output(response, "label").reshape(-1).astype(np.int64),
            probabilities=_output(response, "probabilities").reshape(rows.shape[0], -1).astype(np.float64),
        )


def _output(response: pb.ModelInferResponse, name: str) -> npt.NDArray[np.generic]:
    """An output tensor decoded from raw_output_contents, which lists outputs in the same order."""
    for index, tensor in enumerate(response.outputs):
        if tensor.name != name:
            continue
        if index >= len(response.raw_output_contents):
            raise ClientError(f"serving sent output {name!r} without raw contents")
        if tensor.datatype not in _DTYPES:
            raise ClientError(
                f"serving sent output {name!r} as {tensor.datatype}, which the demo cannot read"
            )
        values = np.frombuffer(response.raw_output_contents[index], dtype=_DTYPES[tensor.datatype])
        return values.reshape(list(tensor.shape))
    raise ClientError(f"serving's answer lacks output {name!r}; it has {[t.name for t in response.outputs]}")
