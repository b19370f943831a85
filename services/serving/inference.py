"""The Open Inference Protocol (v2) over gRPC: protobuf tensors to numpy and back, nothing more.

Each request resolves its model once, so a champion swapped mid-request does not affect it.
Inputs come either all as `raw_input_contents` (little-endian bytes, row-major) or all as typed
`contents`; outputs always go back as `raw_output_contents`.

Feature names travel on the wire: ModelMetadata's input carries the parameters `feature_names` and
`feature_types` (JSON lists, since an OIP parameter is a scalar), and ModelConfig the same as model
parameters. Besides the one `FP32 [-1, N]` tensor that tritonclient and perf_analyzer send, a request
may send one tensor per feature (`[-1]` or `[-1, 1]`, named by the feature), as KServe V2 allows;
they are assembled into the model's column order.

The transport-free core is `InferenceServicer.infer` and the metadata methods; the gRPC methods and
the REST endpoint (cascade.services.serving.rest) are thin adapters over them.

Also Triton's extensions ModelConfig, ModelStatistics and RepositoryIndex, so that Triton's tools
(tritonclient's statistics, perf_analyzer) work against Cascade.

Small requests run `session.run` on the event loop: for a few rows it takes microseconds, less than
handing it to a thread would cost (see bench/RESULTS.md). Larger ones go to a worker thread so the
loop keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from typing import Any

import numpy as np
from prometheus_client import Counter

from cascade.errors import CascadeError, InvalidArgument, NotFound, grpc_errors
from cascade.grpc_io import ServicerContext
from cascade.services.serving.batching import BATCHING_OFF, Batcher, BatchingPolicy
from cascade.services.serving.comparisons import Comparisons
from cascade.services.serving.live_stats import LiveStats, fails_the_version
from cascade.services.serving.prediction_log import PredictionLog
from cascade.services.serving.repository import Array, LoadedModel, ModelRepository, TensorSpec, oip_datatype
from cascade.services.serving.statistics import InferenceStatistics, VersionStatistics
from cascade.services.serving.traffic import ROUTING_KEY, Role, Routed
from cascade.stubs.inference import grpc_service_pb2 as pb
from cascade.stubs.inference import grpc_service_pb2_grpc as pb_grpc
from cascade.stubs.inference import model_config_pb2 as config_pb

__all__ = [
    "EXTENSIONS",
    "FEATURE_NAMES",
    "FEATURE_TYPES",
    "PLATFORM",
    "REQUEST_DTYPES",
    "SERVER_NAME",
    "SERVICE_NAME",
    "InferenceServicer",
    "decode_inputs",
    "model_config",
]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "cascade-serving"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Triton's names for the extensions implemented, as ServerMetadata lists them.
EXTENSIONS = ["model_configuration", "statistics", "model_repository"]
# Parameters of a model's feature input (ModelMetadata) and of its ModelConfig: JSON lists.
FEATURE_NAMES = "feature_names"
FEATURE_TYPES = "feature_types"

# ModelInfer's latency is grpc_server_handling_seconds{grpc_method="ModelInfer"} (shared/metrics.py).
REQUESTS = Counter("cascade_serving_requests_total", "ModelInfer requests.", ["model", "version", "outcome"])

# The datatypes a request may send (little-endian, as raw contents come), and where each one's typed
# values are.
REQUEST_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "BOOL": np.dtype(np.bool_),
}
_CONTENTS_FIELD = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "BOOL": "bool_contents",
}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        repository: ModelRepository,
        prediction_log: PredictionLog,
        server_version: str,
        inline_max_rows: int = 256,
        instances: int = 1,
        live_stats: LiveStats | None = None,
        comparisons: Comparisons | None = None,
        batching: BatchingPolicy = BATCHING_OFF,
    ) -> None:
        self.repository = repository
        self.prediction_log = prediction_log
        self.server_version = server_version
        # Requests of at most this many rows run the model on the event loop, larger ones in a thread.
        self.inline_max_rows = inline_max_rows
        # Runs the model: alone, or batched with concurrent requests for the same version.
        self.batcher = Batcher(batching, inline_max_rows)
        self.instances = instances  # worker processes sharing the port, for ModelConfig
        # While a model has a canary or a shadow: its requests per version and role, and the
        # comparisons of both versions' answers, scored after the answer (comparisons.py).
        self.live_stats = live_stats
        self.comparisons = comparisons
        self.statistics = InferenceStatistics()
        self.ready = False  # set once the service has started; see server_ready

    # -- the transport-free core (the REST endpoint calls these too) -------------------------------
    @property
    def server_ready(self) -> bool:
        """Started, and every model the registry named at start-up loaded or refused (or the
        start-up budget spent): cascade.services.serving.readiness."""
        startup = self.repository.startup
        return self.ready and (startup is None or startup.ready)

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.server_version, extensions=EXTENSIONS)

    def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        model = self.repository.resolve(name, version)
        inputs = [_tensor_metadata(spec) for spec in model.inputs]
        if _takes_features(model):
            for key, value in _feature_parameters(model).items():
                inputs[0].parameters[key].string_param = value
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(version) for version in self.repository.versions(model.name)],
            platform=PLATFORM,
            inputs=inputs,
            outputs=[_tensor_metadata(spec) for spec in model.outputs],
        )

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Answer one request with the version it names, else the one the model's traffic split
        routes it to (by its `routing_key` parameter, else its id); counted in metrics, statistics
        and, while the model has a canary or a shadow, its live stats."""
        started = time.perf_counter_ns()
        try:
            routed = self.repository.routed(
                request.model_name, request.model_version, functools.partial(routing_key, request)
            )
        except BaseException as exc:
            _count_request(self._model_label(request.model_name), "", exc)
            raise
        model = routed.model
        try:
            response = await self._infer(model, request, started, routed)
        except BaseException as exc:
            self.statistics.failure(model.name, model.version, started)
            self._observe(routed, started, exc, request)
            _count_request(model.name, _version_label(model), exc)
            raise
        self._observe(routed, started, None, request)
        _count_request(model.name, response.model_version, None)
        return response

    def _observe(
        self, routed: Routed, started_ns: int, error: BaseException | None, request: pb.ModelInferRequest
    ) -> None:
        route = routed.route
        if self.live_stats is None or route is None or routed.explicit or not route.has_challenger:
            return
        if error is not None and not fails_the_version(error):
            # Refused before the model ran: the request's fault (no evidence either way), unless
            # a canary refused what its champion takes (another input shape, say).
            if routed.role != "canary" or not isinstance(error, InvalidArgument):
                return
            if not _takes(route.champion, request):
                return
        seconds = (time.perf_counter_ns() - started_ns) / 1e9
        model = routed.model
        failed = error is not None
        self.live_stats.observe(model.name, route.revision, model.version, routed.role, seconds, failed)

    # -- gRPC ----------------------------------------------------------------------------------------
    @grpc_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server_ready)

    @grpc_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.repository.is_ready(request.name, request.version))

    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: ServicerContext
    ) -> pb.ServerMetadataResponse:
        return self.server_metadata()

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: ServicerContext
    ) -> pb.ModelMetadataResponse:
        return self.model_metadata(request.name, request.version)

    @grpc_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: ServicerContext
    ) -> pb.ModelInferResponse:
        return await self.infer(request)

    async def _infer(
        self,
        model: LoadedModel,
        request: pb.ModelInferRequest,
        started_ns: int,
        routed: Routed | None = None,
    ) -> pb.ModelInferResponse:
        feeds = decode_inputs(request, model)
        wanted = requested_outputs(request, model.outputs)
        first = feeds[model.inputs[0].name]
        rows = int(first.shape[0]) if first.ndim else 1
        decoded = time.perf_counter_ns()
        # All outputs are computed (sklearn graphs compute them together anyway) so the prediction
        # log always gets the first one, whatever the client asked for.
        prediction = await self.batcher.predict(model, feeds, rows)
        results = prediction.outputs
        inferred = time.perf_counter_ns()
        # A classifier's second output is its probability of each class (the trainer's export).
        probabilities = results[1] if len(results) > 1 and results[1].ndim == 2 else None
        role: Role = "champion" if routed is None else routed.role
        self.prediction_log.record(model, request.id, first, results[0], probabilities, role)
        response = encode_response(request, model, wanted, results)
        if routed is not None and self.comparisons is not None:  # scored later, off the answer path
            self.comparisons.offer(routed, request.id, feeds, results[0])
        self.statistics.success(
            model.name, model.version, rows, started_ns, decoded, inferred, prediction.executions
        )
        return response

    def _model_label(self, name: str) -> str:
        # Names of models never loaded collapse into one label, so clients cannot grow the series.
        return name if self.repository.champion(name) is not None else "_unknown"

    # -- Triton extensions: the core, then gRPC ---------------------------------------------------
    def model_config(self, name: str, version: str = "") -> config_pb.ModelConfig:
        return model_config(self.repository.resolve(name, version), self.instances)

    def model_statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        if name:
            names = [self.repository.resolve(name, version).name]
        elif version:
            raise InvalidArgument("a version needs a model name")
        else:
            names = self.repository.models()
        response = pb.ModelStatisticsResponse()
        for model in names:
            versions = [int(version)] if version else self.repository.versions(model)
            for number in versions:
                _fill_statistics(response.model_stats.add(), model, number, self.statistics.of(model, number))
        return response

    def repository_index(self, repository_name: str = "", ready: bool = False) -> pb.RepositoryIndexResponse:
        if repository_name:
            raise NotFound(f"repository {repository_name!r} does not exist; Cascade serves one, unnamed")
        response = pb.RepositoryIndexResponse()
        for name in self.repository.models():
            for version in self.repository.versions(name):
                response.models.add(name=name, version=str(version), state="READY")
        if not ready:
            for failure in sorted(self.repository.failures.values(), key=lambda f: f.model):
                response.models.add(
                    name=failure.model,
                    version=str(failure.version),
                    state="UNAVAILABLE",
                    reason=f"{failure.reason}: {failure.detail}",
                )
        return response

    @grpc_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: ServicerContext
    ) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.model_config(request.name, request.version))

    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: ServicerContext
    ) -> pb.ModelStatisticsResponse:
        return self.model_statistics(request.name, request.version)

    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return self.repository_index(request.repository_name, request.ready)


def _takes(model: LoadedModel, request: pb.ModelInferRequest) -> bool:
    """Whether `model` would accept the request's inputs and outputs (on a failure path only)."""
    try:
        decode_inputs(request, model)
        requested_outputs(request, model.outputs)
    except InvalidArgument:
        return False
    return True


def routing_key(request: pb.ModelInferRequest) -> str:
    """What keeps a request on one side of a traffic split: its `routing_key` parameter (a string or
    a number), else its id; "" (routed at random) when it has neither."""
    if ROUTING_KEY in request.parameters:
        parameter = request.parameters[ROUTING_KEY]
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            return str(getattr(parameter, choice))
    return request.id


def model_config(model: LoadedModel, instances: int = 1) -> config_pb.ModelConfig:
    """Triton's configuration of a loaded version, from its session's inputs and outputs.

    `max_batch_size` is 0 (Triton's "no implicit batch dimension"): dims are the model's own
    shapes, -1 where a size is free, so clients send the batch dimension themselves. The feature
    names and types of its input are the parameters `feature_names` and `feature_types`.
    """
    parameters = _feature_parameters(model) if _takes_features(model) else {}
    return config_pb.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=0,
        input=[
            config_pb.ModelInput(name=spec.name, data_type=_config_type(spec), dims=spec.shape)
            for spec in model.inputs
        ],
        output=[
            config_pb.ModelOutput(name=spec.name, data_type=_config_type(spec), dims=spec.shape)
            for spec in model.outputs
        ],
        instance_group=[
            config_pb.ModelInstanceGroup(
                name=model.name, kind=config_pb.ModelInstanceGroup.KIND_CPU, count=instances
            )
        ],
        parameters={key: config_pb.ModelParameter(string_value=value) for key, value in parameters.items()},
    )


def _takes_features(model: LoadedModel) -> bool:
    """Whether the model's one input is a `[-1, N]` matrix whose N columns are its named features."""
    if len(model.inputs) != 1 or not model.features:
        return False
    shape = model.inputs[0].shape
    return len(shape) == 2 and shape[1] == len(model.features)


def _feature_parameters(model: LoadedModel) -> dict[str, str]:
    datatype = model.inputs[0].datatype
    return {
        FEATURE_NAMES: json.dumps(list(model.features)),
        FEATURE_TYPES: json.dumps([datatype] * len(model.features)),
    }


def _config_type(spec: TensorSpec) -> config_pb.DataType.ValueType:
    return config_pb.DataType.Value(f"TYPE_{spec.datatype}")


def _fill_statistics(message: pb.ModelStatistics, name: str, version: int, stats: VersionStatistics) -> None:
    message.name = name
    message.version = str(version)
    message.last_inference = stats.last_inference_ms
    message.inference_count = stats.inference_count
    message.execution_count = stats.execution_count
    inference = message.inference_stats
    inference.success.count, inference.success.ns = stats.success_count, stats.success_ns
    inference.fail.count, inference.fail.ns = stats.fail_count, stats.fail_ns
    # No queue time apart (count and zero ns, as Triton reports an unqueued model): with adaptive
    # batching a request's wait for its batch is part of its compute_infer time.
    inference.queue.count = stats.success_count
    inference.compute_input.count, inference.compute_input.ns = stats.success_count, stats.compute_input_ns
    inference.compute_infer.count, inference.compute_infer.ns = stats.success_count, stats.compute_infer_ns
    inference.compute_output.count = stats.success_count
    inference.compute_output.ns = stats.compute_output_ns


def decode_inputs(request: pb.ModelInferRequest, model: LoadedModel) -> dict[str, Array]:
    """The request's input tensors as arrays of the model's dtypes, checked against its inputs:
    either the model's own inputs, or one tensor per named feature (assembled in column order)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send raw contents for "
            "every input or for none"
        )
    expected = {spec.name: spec for spec in model.inputs}
    if request.inputs and request.inputs[0].name not in expected and _takes_features(model):
        return {model.inputs[0].name: _assemble_features(request, model)}
    feeds: dict[str, Array] = {}
    for index, tensor in enumerate(request.inputs):
        spec = expected.get(tensor.name)
        if spec is None:
            raise InvalidArgument(f"unknown input {tensor.name!r}; the model's inputs are {list(expected)}")
        if tensor.name in feeds:
            raise InvalidArgument(f"input {tensor.name!r} is given twice")
        feeds[tensor.name] = _conform(
            _decode_tensor(tensor, raw[index] if raw else None), tensor.datatype, spec
        )
    missing = [name for name in expected if name not in feeds]
    if missing:
        raise InvalidArgument(f"missing input(s) {missing}; the model's inputs are {list(expected)}")
    return feeds


def _assemble_features(request: pb.ModelInferRequest, model: LoadedModel) -> Array:
    """One `[-1]` or `[-1, 1]` tensor per feature, as the model's `[-1, N]` input in column order."""
    spec = model.inputs[0]
    columns = {name: index for index, name in enumerate(model.features)}
    raw = request.raw_input_contents
    matrix: Array | None = None
    seen: set[str] = set()
    for index, tensor in enumerate(request.inputs):
        column = columns.get(tensor.name)
        if column is None:
            raise InvalidArgument(
                f"unknown input {tensor.name!r}: send the model's input {spec.name!r}, or one tensor "
                f"per feature of {list(model.features)}"
            )
        if tensor.name in seen:
            raise InvalidArgument(f"feature {tensor.name!r} is given twice")
        seen.add(tensor.name)
        values = _decode_tensor(tensor, raw[index] if raw else None)
        if values.ndim not in (1, 2) or (values.ndim == 2 and values.shape[1] != 1):
            raise InvalidArgument(
                f"feature {tensor.name!r} has shape {list(values.shape)}; a feature is [-1] or [-1, 1]"
            )
        if matrix is None:
            matrix = np.empty((values.shape[0], len(columns)), dtype=spec.dtype)
        elif values.shape[0] != matrix.shape[0]:
            raise InvalidArgument(
                f"feature {tensor.name!r} has {values.shape[0]} rows, but the first feature has "
                f"{matrix.shape[0]}"
            )
        if values.dtype != spec.dtype and not np.can_cast(values.dtype, spec.dtype, casting="same_kind"):
            raise InvalidArgument(
                f"feature {tensor.name!r} has datatype {tensor.datatype}, which cannot be converted "
                f"to the model's {spec.datatype}"
            )
        matrix[:, column] = values.reshape(-1)
    missing = [name for name in model.features if name not in seen]
    if missing:
        raise InvalidArgument(f"missing feature(s) {missing}: send one tensor per feature of the model")
    assert matrix is not None  # every feature was seen, and a model has at least one
    return matrix


def _decode_tensor(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> Array:
    dtype = REQUEST_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidArgument(
            f"input {tensor.name!r} has datatype {tensor.datatype!r}; supported: {list(REQUEST_DTYPES)}"
        )
    shape = tensor.shape[:]  # a list: cheaper than a tuple of the repeated field
    if min(shape, default=0) < 0:
        raise InvalidArgument(f"input {tensor.name!r} has shape {shape}; sizes cannot be negative")
    count = math.prod(shape)
    if raw is None:
        values = getattr(tensor.contents, _CONTENTS_FIELD[tensor.datatype])
        if len(values) != count:
            raise InvalidArgument(
                f"input {tensor.name!r}: contents.{_CONTENTS_FIELD[tensor.datatype]} has {len(values)} "
                f"values, but shape {shape} needs {count}"
            )
        return np.array(values, dtype=dtype).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgument(
            f"input {tensor.name!r}: raw_input_contents has {len(raw)} bytes, but shape {shape} "
            f"of {tensor.datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _conform(array: Array, datatype: str, spec: TensorSpec) -> Array:
    """Check the shape against the model's and cast to its dtype when no kind changes (FP64 -> FP32)."""
    if not _fits(array.shape, spec.shape):
        raise InvalidArgument(
            f"input {spec.name!r} has shape {list(array.shape)}, but the model expects {list(spec.shape)} "
            "(-1: any size)"
        )
    if array.dtype == spec.dtype:
        return array
    if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
        raise InvalidArgument(
            f"input {spec.name!r} has datatype {datatype}, which cannot be converted to the model's "
            f"{spec.datatype}"
        )
    return array.astype(spec.dtype)


def _fits(shape: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    """Whether `shape` is `wanted`, where -1 in `wanted` takes any size."""
    return len(shape) == len(wanted) and all(
        want in (-1, got) for got, want in zip(shape, wanted, strict=True)
    )


def requested_outputs(request: pb.ModelInferRequest, specs: tuple[TensorSpec, ...]) -> list[str]:
    """The outputs to answer with, in the requested order; all of the model's when none is named."""
    known = [spec.name for spec in specs]
    if not request.outputs:
        return known
    names = [output.name for output in request.outputs]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidArgument(f"unknown output(s) {unknown}; the model's outputs are {known}")
    if len(set(names)) != len(names):
        raise InvalidArgument(f"outputs {names} name one output more than once")
    return names


def encode_response(
    request: pb.ModelInferRequest, model: LoadedModel, names: list[str], results: list[Array]
) -> pb.ModelInferResponse:
    by_name = {spec.name: result for spec, result in zip(model.outputs, results, strict=True)}
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=_version_label(model), id=request.id
    )
    # Filled field by field: cheaper than building each tensor message from keyword arguments.
    for name in names:
        array = by_name[name]
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = _datatype(array.dtype)
        tensor.shape.extend(array.shape)
        # tobytes() is row-major whatever the layout; only a big-endian array needs converting.
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        response.raw_output_contents.append(array.tobytes())
    return response


def _version_label(model: LoadedModel) -> str:
    return str(model.version)


_DATATYPES: dict[np.dtype[Any], str] = {}


def _datatype(dtype: np.dtype[Any]) -> str:
    """`oip_datatype`, remembered per dtype (it is asked for on every answer)."""
    name = _DATATYPES.get(dtype)
    if name is None:
        name = _DATATYPES[dtype] = oip_datatype(dtype)
    return name


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def _count_request(model: str, version: str, exc: BaseException | None) -> None:
    labels = (model, version, _outcome(exc))
    counter = _REQUEST_COUNTERS.get(labels)
    if counter is None:  # looked up once per label set: labels() is slow on every request
        counter = _REQUEST_COUNTERS[labels] = REQUESTS.labels(*labels)
    counter.inc()


_REQUEST_COUNTERS: dict[tuple[str, str, str], Any] = {}


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, CascadeError):
        return exc.status.name.lower()
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "internal"
