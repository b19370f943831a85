"""The Open Inference Protocol's HTTP/REST binding (KServe V2) over serving's core, on uvicorn.

A thin adapter, as the gRPC servicer is: JSON (or the binary-data extension) in, a
`ModelInferRequest` for `InferenceServicer.infer` (the same decoding, checks, statistics, metrics
and prediction log as gRPC), JSON or binary out. It runs in the serving process beside the gRPC
server, on the same event loop, so it sees the same loaded models and every hot swap at the same
instant. With several serving workers each binds the HTTP port too (SO_REUSEPORT), as for gRPC.

Endpoints (KServe V2, plus Triton's config, statistics and repository index that tritonclient.http
calls):

    GET  /v2/health/live | /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}]/ready
    GET  /v2                                            server metadata
    GET  /v2/models/{name}[/versions/{v}]               model metadata (feature names as parameters)
    POST /v2/models/{name}[/versions/{v}]/infer         JSON tensors, or the binary-data extension
    GET  /v2/models/{name}[/versions/{v}]/config
    GET  /v2/models[/{name}[/versions/{v}]]/stats
    POST /v2/repository/index
    POST /v2/models/{name}[/versions/{v}]/explain       per-prediction attributions (cascade.explain.v1's
                                                        Explain: the same core, JSON in and out)

Health answers 200 when true and 400 when false, as the protocol says; a server not ready says why
(`"reason": "not ready: loading 2 models (...)"`). A request for a model still loading at start-up
is 503 (UNAVAILABLE: retry), not 404. A client's mistake is 400
(404 for an unknown model) with `{"error": "..."}`, never 500. Who may call what is the `admit`
hook's decision (cascade.services.serving.app gives it the roles of each endpoint's gRPC twin), from the
`Authorization` header; client certificates are not read here.

Binary-data extension: with the header `Inference-Header-Content-Length: N` the body is N bytes of
JSON followed by the inputs whose `parameters.binary_data_size` is set, in order (little-endian,
row-major). Outputs go back binary when the request asks (`binary_data` on an output, or
`binary_data_output` on the request), as tritonclient.http does by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import uvicorn
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cascade.errors import CascadeError, InvalidArgument
from cascade.services.serving.explain import EXPLAIN_SERVICE_NAME, ExplainCore, query_of_json, response_of
from cascade.services.serving.inference import REQUEST_DTYPES, InferenceServicer
from cascade.services.serving.repository import OIP_DTYPES
from cascade.services.serving.traffic import ROUTING_KEY
from cascade.stubs.inference import grpc_service_pb2 as pb

__all__ = ["HEADER_LENGTH", "Admission", "RestEndpoint", "ServerTls", "rest_app"]

log = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"
# As large as gRPC's limit (cascade.service.GRPC_OPTIONS).
MAX_BODY_BYTES = 64 * 1024 * 1024
# Bodies up to this size are parsed and answered on the event loop; larger ones in a worker thread,
# so that decoding a big JSON request never stalls the other requests.
INLINE_BODY_BYTES = 64 * 1024

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAVAILABLE: 503,
}

Handler = Callable[[Request], Awaitable[Response]]
# The explain endpoint's gRPC twin, by its full path (the inference endpoints' are method names).
EXPLAIN_METHOD = f"/{EXPLAIN_SERVICE_NAME}/Explain"
# Lets a call through or raises (Unauthenticated, PermissionDenied): given the request's
# Authorization header (None without one) and the name of the gRPC method the endpoint mirrors.
Admission = Callable[[str | None, str], None]


class _RestError(Exception):
    """A refusal the REST layer itself makes (HTTP status and message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def rest_app(
    servicer: InferenceServicer, admit: Admission | None = None, explainer: ExplainCore | None = None
) -> Starlette:
    """The ASGI app; `admit` checks every call (None: everyone may call everything); `explainer`
    answers `.../explain` (None: explanations are off, 404)."""

    def endpoint(method: str, handle: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            try:
                if admit is not None:
                    admit(request.headers.get("authorization"), method)
                return await handle(request)
            except _RestError as exc:
                return _error(exc.status, str(exc))
            except CascadeError as exc:
                return _error(_HTTP_STATUS.get(exc.status, 500), str(exc))
            except Exception as exc:
                log.exception("REST %s failed", method)
                return _error(500, f"internal error ({type(exc).__name__}); see the server's log")

        return guarded

    api = _Endpoints(servicer, explainer)
    routes = [
        Route("/v2/health/live", endpoint("ServerLive", api.live)),
        Route("/v2/health/ready", endpoint("ServerReady", api.ready)),
        Route("/v2", endpoint("ServerMetadata", api.server_metadata)),
        Route("/v2/models/stats", endpoint("ModelStatistics", api.statistics)),
        Route("/v2/repository/index", endpoint("RepositoryIndex", api.repository_index), methods=["POST"]),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix, endpoint("ModelMetadata", api.model_metadata)),
            Route(f"{prefix}/ready", endpoint("ModelReady", api.model_ready)),
            Route(f"{prefix}/infer", endpoint("ModelInfer", api.infer), methods=["POST"]),
            Route(f"{prefix}/config", endpoint("ModelConfig", api.config)),
            Route(f"{prefix}/stats", endpoint("ModelStatistics", api.statistics)),
            Route(f"{prefix}/explain", endpoint(EXPLAIN_METHOD, api.explain), methods=["POST"]),
        ]
    app = Starlette(routes=routes)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no endpoint {request.method} {request.url.path}")

    async def wrong_method(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}")

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, wrong_method)
    return app


class _Endpoints:
    """Each endpoint: HTTP to the core's call and back."""

    def __init__(self, servicer: InferenceServicer, explainer: ExplainCore | None = None) -> None:
        self.servicer = servicer
        self.explainer = explainer

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        if self.servicer.server_ready:
            return _truth("ready", True)
        startup = self.servicer.repository.startup
        reason = (startup.reason() if startup is not None else "") or "not ready: starting"
        return JSONResponse({"ready": False, "reason": reason}, status_code=400)

    async def model_ready(self, request: Request) -> Response:
        return _truth("ready", self.servicer.repository.is_ready(*_model(request)))

    async def server_metadata(self, request: Request) -> Response:
        metadata = self.servicer.server_metadata()
        return JSONResponse(
            {"name": metadata.name, "version": metadata.version, "extensions": list(metadata.extensions)}
        )

    async def model_metadata(self, request: Request) -> Response:
        metadata = self.servicer.model_metadata(*_model(request))
        return JSONResponse(
            {
                "name": metadata.name,
                "versions": list(metadata.versions),
                "platform": metadata.platform,
                "inputs": [_tensor_metadata(tensor) for tensor in metadata.inputs],
                "outputs": [_tensor_metadata(tensor) for tensor in metadata.outputs],
            }
        )

    async def infer(self, request: Request) -> Response:
        name, version = _model(request)
        body = await _body(request)
        inline = len(body) <= INLINE_BODY_BYTES
        header_length = request.headers.get(HEADER_LENGTH)
        if inline:
            infer_request, binary_outputs = _decode_request(body, header_length, name, version)
        else:
            infer_request, binary_outputs = await asyncio.to_thread(
                _decode_request, body, header_length, name, version
            )
        response = await self.servicer.infer(infer_request)
        if inline and sum(map(len, response.raw_output_contents)) <= INLINE_BODY_BYTES:
            return _encode_response(response, binary_outputs)
        return await asyncio.to_thread(_encode_response, response, binary_outputs)

    async def explain(self, request: Request) -> Response:
        if self.explainer is None:
            raise _RestError(404, "explanations are off on this server (CASCADE_SERVING_EXPLAIN_ENABLED)")
        query = query_of_json(*_model(request), _json_object(await _body(request)))
        model, explanation = await self.explainer.explain(query)
        return JSONResponse(message_json(response_of(query, model, explanation)))

    async def config(self, request: Request) -> Response:
        return JSONResponse(message_json(self.servicer.model_config(*_model(request))))

    async def statistics(self, request: Request) -> Response:
        return JSONResponse(message_json(self.servicer.model_statistics(*_model(request))))

    async def repository_index(self, request: Request) -> Response:
        body = await _body(request)
        options = _json_object(body) if body.strip() else {}
        ready = options.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument('"ready" must be true or false')
        index = self.servicer.repository_index("", ready)
        return JSONResponse([message_json(model) for model in index.models])


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _truth(key: str, value: bool) -> JSONResponse:
    return JSONResponse({key: value}, status_code=200 if value else 400)


def _model(request: Request) -> tuple[str, str]:
    params = request.path_params
    return params.get("name", ""), params.get("version", "")


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdecimal() and int(declared) > MAX_BODY_BYTES:
        raise _RestError(413, f"the body has {declared} bytes; at most {MAX_BODY_BYTES} are taken")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _RestError(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(text: bytes) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"the body must be a JSON object, not {type(value).__name__}")
    return value


def _tensor_metadata(tensor: pb.ModelMetadataResponse.TensorMetadata) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    if tensor.parameters:
        metadata["parameters"] = {key: _parameter_value(value) for key, value in tensor.parameters.items()}
    return metadata


def _parameter_value(parameter: pb.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


# -- inference ---------------------------------------------------------------------------------------
def _decode_request(
    body: bytes, header_length: str | None, name: str, version: str
) -> tuple[pb.ModelInferRequest, dict[str, bool]]:
    """The body as a ModelInferRequest (every input as raw little-endian bytes), and for each
    requested output whether it goes back binary (empty: all outputs, `binary_data_output`)."""
    if header_length is None:
        header, binary = _json_object(body), b""
    else:
        if not header_length.isdecimal() or int(header_length) > len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} is {header_length!r}, but the body has {len(body)} bytes")
        split = int(header_length)
        header, binary = _json_object(body[:split]), body[split:]
    request = pb.ModelInferRequest(model_name=name, model_version=version)
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument('"id" must be a string')
    request.id = request_id
    parameters = _mapping(header.get("parameters"), "parameters")
    routing_key = parameters.get(ROUTING_KEY)
    if routing_key is not None:  # keeps the request on one side of a traffic split, as over gRPC
        if isinstance(routing_key, bool) or not isinstance(routing_key, str | int):
            raise InvalidArgument(f'"parameters.{ROUTING_KEY}" must be a string or an integer')
        request.parameters[ROUTING_KEY].string_param = str(routing_key)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument('"inputs" must be a non-empty list of tensors')
    offset = 0
    for index, item in enumerate(inputs):
        offset = _add_input(request, _mapping(item, f"inputs[{index}]"), binary, offset)
    if offset != len(binary):
        raise InvalidArgument(
            f"the body has {len(binary)} bytes after the JSON header, but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    default_binary = _flag(parameters, "binary_data_output", "parameters")
    binary_outputs: dict[str, bool] = {}
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidArgument('"outputs" must be a list')
    for index, item in enumerate(outputs):
        output = _mapping(item, f"outputs[{index}]")
        output_name = output.get("name")
        if not isinstance(output_name, str):
            raise InvalidArgument(f"outputs[{index}] needs a string name")
        request.outputs.add(name=output_name)
        output_parameters = _mapping(output.get("parameters"), f"outputs[{index}].parameters")
        binary_outputs[output_name] = (
            _flag(output_parameters, "binary_data", f"outputs[{index}].parameters") or default_binary
        )
    binary_outputs[""] = default_binary  # for outputs not named
    return request, binary_outputs


def _add_input(request: pb.ModelInferRequest, item: Mapping[str, Any], binary: bytes, offset: int) -> int:
    """Append one input (name, datatype, shape, and its bytes); the new offset in `binary`."""
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("every input needs a string name")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"input {name!r} needs a string datatype")
    dtype = REQUEST_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"input {name!r} has datatype {datatype!r}; supported: {list(REQUEST_DTYPES)}")
    if not isinstance(shape, list) or not all(type(size) is int and size >= 0 for size in shape):
        raise InvalidArgument(f"input {name!r} needs a shape: a list of sizes of at least 0")
    count = math.prod(shape)
    parameters = _mapping(item.get("parameters"), f"input {name!r} parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidArgument(f"input {name!r}: binary_data_size must be a size in bytes")
        if item.get("data") is not None:
            raise InvalidArgument(f"input {name!r} has both data and binary_data_size")
        if offset + size > len(binary):
            raise InvalidArgument(
                f"input {name!r}: binary_data_size {size} goes past the {len(binary)} bytes after the header"
            )
        raw = binary[offset : offset + size]
        offset += size
    else:
        raw = _json_tensor(name, item.get("data"), dtype, count)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return offset


def _json_tensor(name: str, data: Any, dtype: np.dtype[Any], count: int) -> bytes:
    """JSON data as the datatype's little-endian bytes. The values must be of the datatype's kind:
    numbers, not numeric strings; integers for an integer datatype (within its range); true/false
    for BOOL. Nothing is rounded or wrapped silently."""
    if not isinstance(data, list):
        raise InvalidArgument(f"input {name!r} needs data: a (flat or nested) list of {count} values")
    try:
        values = np.asarray(data)
    except (ValueError, OverflowError) as exc:  # ragged nesting, integers past 64 bits
        raise InvalidArgument(f"input {name!r}: data are not {count} numbers ({exc})") from None
    if values.size != count:
        raise InvalidArgument(f"input {name!r} has {values.size} values, but its shape needs {count}")
    if count and not _fits_kind(values, dtype):
        raise InvalidArgument(
            f"input {name!r}: data of kind {values.dtype.name} do not fit its datatype {dtype.name}"
        )
    return values.astype(dtype.newbyteorder("<"), copy=False).tobytes()


def _fits_kind(values: npt.NDArray[Any], dtype: np.dtype[Any]) -> bool:
    kind = values.dtype.kind
    if dtype.kind == "b":
        return kind == "b"
    if dtype.kind == "f":
        return kind in "biuf"
    if kind not in "biu":  # an integer datatype takes integers only
        return False
    limits = np.iinfo(dtype)
    return bool(limits.min <= values.min() and values.max() <= limits.max)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _flag(parameters: Mapping[str, Any], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what}.{key} must be true or false")
    return value


def _encode_response(response: pb.ModelInferResponse, binary_outputs: Mapping[str, bool]) -> Response:
    header: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        header["id"] = response.id
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        output: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary_outputs.get(tensor.name, binary_outputs.get("", False)):
            output["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            output["data"] = np.frombuffer(raw, dtype=_ANSWER_DTYPES[tensor.datatype]).tolist()
        outputs.append(output)
    header["outputs"] = outputs
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return Response(encoded, media_type="application/json")
    return Response(
        b"".join([encoded, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(encoded))},
    )


# The little-endian dtype of each datatype an answer may carry (raw contents are little-endian).
_ANSWER_DTYPES = {name: dtype.newbyteorder("<") for name, dtype in OIP_DTYPES.items()}


# -- Triton's JSON for its protobuf messages ---------------------------------------------------------
def message_json(message: Message) -> dict[str, Any]:
    """A message as Triton's HTTP API writes it: every field by its proto name, integers as JSON
    numbers (protobuf's own JSON writes 64-bit integers as strings), enums by name."""
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[field.name] = {key: _field_json(value_field, item) for key, item in value.items()}
        elif field.is_repeated:
            result[field.name] = [_field_json(field, item) for item in value]
        else:
            result[field.name] = _field_json(field, value)
    return result


def _field_json(field: Any, value: Any) -> Any:  # a FieldDescriptor (upb or python)
    if field.message_type is not None:
        return message_json(value)
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    return value


# -- the server ------------------------------------------------------------------------------------
class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside a service: the service's runtime owns SIGTERM and SIGINT (cascade.service), so
    uvicorn must not replace their handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class ServerTls:
    """PEM files of the REST server's TLS; with `client_ca`, callers must present a certificate
    signed by it (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca: Path | None = None


class RestEndpoint:
    """The REST app served on `host:port` (0: a free port, then `port` tells which), sharing the
    port with the other serving workers when `share_port` (SO_REUSEPORT)."""

    def __init__(
        self,
        app: Starlette,
        host: str,
        port: int,
        share_port: bool = False,
        grace_seconds: float = 5.0,
        tls: ServerTls | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.share_port = share_port
        self.grace_seconds = grace_seconds
        self.tls = tls
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    def _config(self) -> uvicorn.Config:
        tls: dict[str, Any] = {}
        if self.tls is not None:
            tls = {"ssl_certfile": str(self.tls.cert_file), "ssl_keyfile": str(self.tls.key_file)}
            if self.tls.client_ca is not None:
                tls |= {"ssl_ca_certs": str(self.tls.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return uvicorn.Config(
            self.app,
            log_config=None,  # the service's logging (cascade.logs) stays as it is
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=math.ceil(self.grace_seconds),
            **tls,
        )

    async def start(self) -> None:
        listener = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.share_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            listener.bind((self.host, self.port))
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._server = _EmbeddedServer(self._config())
        self._task = asyncio.create_task(self._server.serve(sockets=[listener]), name="rest")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises why it could not start
                raise RuntimeError("the REST server stopped before it started")
            await asyncio.sleep(0.01)
        scheme = "https" if self.tls is not None else "http"
        log.info("serving REST (KServe V2) listening on %s://%s:%d", scheme, self.host, self.port)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
