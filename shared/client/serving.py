"""The client of serving's Open Inference Protocol (KServe V2) over gRPC: metadata and predictions
from pandas DataFrames or numpy arrays, matched to the model's features by name.

The V2 messages are built in a private descriptor pool from the serialized descriptors of
protos/inference (`descriptor_set.binpb` beside the stubs, written by cascade.protogen), not by
importing the generated stubs: their proto package `inference` is tritonclient's too, and both
registering `inference.*` in protobuf's default pool makes the second import fail. So this client
and tritonclient load in one process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import grpc
import numpy as np
import pandas as pd
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from cascade.client.calls import RemoteService, call
from cascade.client.channels import PLAINTEXT, ClientSecurity, open_channel
from cascade.client.records import TensorSpec
from cascade.errors import InvalidArgument

__all__ = ["Prediction", "ServedModel", "ServingClient"]

_SERVICE = "/inference.GRPCInferenceService/"
# The input parameters serving puts in ModelMetadata (cascade.services.serving.inference).
_FEATURE_NAMES = "feature_names"
_FEATURE_TYPES = "feature_types"
# Little-endian, as raw tensor contents travel.
_DTYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

# Where the V2 protocol puts each datatype's values when they are not sent raw.
_CONTENTS_FIELD: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


@dataclass(frozen=True)
class ServedModel:
    """A model as serving answers for it: the versions loaded, its tensors and its features."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # The columns of its one `[-1, N]` input, in order; empty when its inputs are not features.
    features: tuple[str, ...]
    feature_types: tuple[str, ...]


@dataclass(frozen=True)
class Prediction:
    """One answer: which version gave it, and each output as an array (rows first)."""

    model: str
    version: str
    outputs: Mapping[str, np.ndarray]

    def __getitem__(self, output: str) -> np.ndarray:
        return self.outputs[output]


class _Messages:
    """The V2 message classes, from a descriptor pool of their own."""

    def __init__(self) -> None:
        data = resources.files("cascade.stubs.inference").joinpath("descriptor_set.binpb").read_bytes()
        pool = descriptor_pool.DescriptorPool()
        for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
            pool.Add(file)

        def message(name: str) -> Any:
            return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))

        self.ModelReadyRequest = message("ModelReadyRequest")
        self.ModelReadyResponse = message("ModelReadyResponse")
        self.ModelMetadataRequest = message("ModelMetadataRequest")
        self.ModelMetadataResponse = message("ModelMetadataResponse")
        self.ModelInferRequest = message("ModelInferRequest")
        self.ModelInferResponse = message("ModelInferResponse")


@cache
def _messages() -> _Messages:
    return _Messages()


class ServingClient:
    """Serving's V2 endpoint. `predict` takes a DataFrame (columns matched to the model's features
    by name, any order, extra columns ignored) or an array (the model's input as it is)."""

    def __init__(
        self, address: str, security: ClientSecurity = PLAINTEXT, channel: grpc.aio.Channel | None = None
    ) -> None:
        self.service = RemoteService("serving", channel or open_channel(address, security), address)
        messages = _messages()
        self._messages = messages
        self._ready = self._method("ModelReady", messages.ModelReadyResponse)
        self._metadata = self._method("ModelMetadata", messages.ModelMetadataResponse)
        self._infer = self._method("ModelInfer", messages.ModelInferResponse)
        # Metadata per (model, version asked for). A DataFrame is sent as one tensor per feature,
        # which serving assembles by name, so a cached entry goes stale only when the features
        # themselves change; the request then fails as bad input and is retried with fresh metadata.
        self._served: dict[tuple[str, str], ServedModel] = {}

    async def close(self) -> None:
        await self.service.channel.close(grace=None)

    def _method(self, name: str, response: Any) -> Callable[..., Any]:
        return self.service.channel.unary_unary(
            _SERVICE + name,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response.FromString,
        )

    async def model_ready(self, name: str, version: str = "") -> bool:
        """Whether serving has `name` (at `version`, or its champion) loaded and answering."""
        request = self._messages.ModelReadyRequest(name=name, version=version)
        response = await call(self.service, f"asking whether {name!r} is ready", lambda: self._ready(request))
        return bool(response.ready)

    async def model_metadata(self, name: str, version: str = "") -> ServedModel:
        """The model's inputs, outputs and feature names (its champion when `version` is empty)."""
        request = self._messages.ModelMetadataRequest(name=name, version=version)
        what = f"reading the metadata of {name!r}"
        response = await call(self.service, what, lambda: self._metadata(request))
        served = _served_model(response)
        self._served[(name, version)] = served
        return served

    async def predict(
        self,
        name: str,
        data: pd.DataFrame | np.ndarray,
        version: str = "",
        outputs: Sequence[str] = (),
    ) -> Prediction:
        """The model's answer for every row of `data`; all its outputs unless `outputs` names some."""
        served = self._served.get((name, version)) or await self.model_metadata(name, version)
        try:
            return await self._predict(served, data, version, outputs)
        except InvalidArgument:
            if not isinstance(data, pd.DataFrame):
                raise
            fresh = await self.model_metadata(name, version)
            if fresh == served:
                raise
            return await self._predict(fresh, data, version, outputs)

    async def _predict(
        self, served: ServedModel, data: pd.DataFrame | np.ndarray, version: str, outputs: Sequence[str]
    ) -> Prediction:
        request = self._messages.ModelInferRequest(model_name=served.name, model_version=version)
        if isinstance(data, pd.DataFrame):
            _add_feature_tensors(request, served, data)
        else:
            _add_array_tensor(request, served, np.asarray(data))
        for output in outputs:
            request.outputs.add(name=output)
        response = await call(self.service, f"predicting with {served.name!r}", lambda: self._infer(request))
        return _prediction(response)


def _served_model(response: Any) -> ServedModel:
    def tensors(specs: Any) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in specs)

    def json_list(parameters: Any, key: str) -> tuple[str, ...]:
        if key not in parameters:
            return ()
        return tuple(str(value) for value in json.loads(parameters[key].string_param))

    parameters = response.inputs[0].parameters if len(response.inputs) == 1 else {}
    return ServedModel(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=tensors(response.inputs),
        outputs=tensors(response.outputs),
        features=json_list(parameters, _FEATURE_NAMES),
        feature_types=json_list(parameters, _FEATURE_TYPES),
    )


def _dtype(datatype: str) -> np.dtype[Any]:
    dtype = _DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"datatype {datatype!r} is not supported; supported: {list(_DTYPES)}")
    return dtype


def _add_feature_tensors(request: Any, served: ServedModel, frame: pd.DataFrame) -> None:
    """One `[rows]` tensor per feature, named by it: serving places each in its column."""
    if not served.features:
        raise InvalidArgument(
            f"model {served.name!r} does not name its features, so a DataFrame's columns cannot be "
            "matched to its input; pass a numpy array in the model's own column order"
        )
    missing = [feature for feature in served.features if feature not in frame.columns]
    if missing:
        raise InvalidArgument(
            f"the DataFrame has no column for feature(s) {missing} of model {served.name!r} "
            f"(it needs {list(served.features)})"
        )
    types = served.feature_types or (served.inputs[0].datatype,) * len(served.features)
    for feature, datatype in zip(served.features, types, strict=True):
        column = frame[feature]
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
            raise InvalidArgument(f"column {feature!r} holds {column.dtype} values; the model needs numbers")
        values = column.to_numpy(dtype=_dtype(datatype))
        request.inputs.add(name=feature, datatype=datatype, shape=[len(values)])
        request.raw_input_contents.append(values.tobytes())


def _add_array_tensor(request: Any, served: ServedModel, array: np.ndarray) -> None:
    """The array as the model's one input, converted to its datatype."""
    if len(served.inputs) != 1:
        raise InvalidArgument(
            f"model {served.name!r} has {len(served.inputs)} inputs; an array can feed only a model with one"
        )
    spec = served.inputs[0]
    dtype = _dtype(spec.datatype)
    if array.dtype != dtype and not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise InvalidArgument(f"an array of {array.dtype} cannot feed {spec.name!r} of {spec.datatype}")
    values = np.ascontiguousarray(array, dtype=dtype)
    request.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(values.shape))
    request.raw_input_contents.append(values.tobytes())


def _prediction(response: Any) -> Prediction:
    outputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        if index < len(response.raw_output_contents):
            values = np.frombuffer(response.raw_output_contents[index], dtype=_dtype(tensor.datatype))
        else:
            values = np.array(_typed_contents(tensor), dtype=_dtype(tensor.datatype))
        outputs[tensor.name] = values.reshape(shape)
    return Prediction(model=response.model_name, version=response.model_version, outputs=outputs)


def _typed_contents(tensor: Any) -> Sequence[Any]:
    """Values sent in the typed `contents` fields (a V2 server may answer so; serving sends raw)."""
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidArgument(f"output {tensor.name!r} of {tensor.datatype} came without raw contents")
    return list(getattr(tensor.contents, field))
