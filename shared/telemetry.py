"""OpenTelemetry set-up shared by every service and the CLI.

Exporters are chosen by the standard `OTEL_TRACES_EXPORTER` (comma-separated names looked up in the
`opentelemetry_traces_exporter` entry-point group, so `console` and any installed exporter work;
`otlp` follows `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or, the spec's default, `http/protobuf`).
Cascade adds `otlp_json_file`: OTLP-JSON lines written to `CASCADE_TRACES_FILE`, the format of the
Collector's file exporter, which `cascade trace` reads without any backend.

gRPC servers trace with `GrpcServerTracing` rather than opentelemetry-instrumentation-grpc's server
interceptor, which costs a fast RPC a third of its throughput even with tracing off (it builds a
span, attributes and a context proxy per call): a call gets a server span when its caller sent a
W3C trace context, and otherwise only with probability `root_sample_rate`.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import random
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from cascade.interceptors import Behaviour, MethodInterceptor, RpcMethod

__all__ = [
    "GrpcServerTracing",
    "OtlpJsonFileSpanExporter",
    "current_trace_id",
    "grpc_server_interceptors",
    "setup_tracing",
]

_EXPORTER_GROUP = "opentelemetry_traces_exporter"


class OtlpJsonFileSpanExporter(SpanExporter):
    """Appends each batch of spans as one line of OTLP-JSON (ids in hex, as OTLP-JSON requires)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        target = path or os.environ.get("CASCADE_TRACES_FILE", "cascade-traces.jsonl")
        self._path = Path(target)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        document = json_format.MessageToDict(encode_spans(spans))
        _hex_ids(document)
        line = json.dumps(document, separators=(",", ":")) + "\n"
        with self._lock, self._path.open("a", encoding="utf-8") as out:
            out.write(line)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _hex_ids(document: dict[str, Any]) -> None:
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        if key in link:
                            link[key] = base64.b64decode(link[key]).hex()


def _load_exporter(name: str) -> SpanExporter:
    if name == "otlp":
        # The spec's "otlp" means the protocol OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL names.
        default = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", default)
        name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
    matches = entry_points(group=_EXPORTER_GROUP, name=name)
    if not matches:
        known = sorted(ep.name for ep in entry_points(group=_EXPORTER_GROUP))
        raise ValueError(f"OTEL_TRACES_EXPORTER names unknown exporter {name!r}; installed: {known}")
    exporter_class = next(iter(matches)).load()
    exporter: SpanExporter = exporter_class()
    return exporter


def setup_tracing(service_name: str, service_version: str) -> TracerProvider:
    """Install the global tracer provider for this process, with `service.name` and `service.version`."""
    resource = Resource.create({"service.name": service_name, "service.version": service_version})
    provider = TracerProvider(resource=resource)
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true":
        for name in (n.strip() for n in names.split(",")):
            if name and name != "none":
                provider.add_span_processor(BatchSpanProcessor(_load_exporter(name)))
    trace.set_tracer_provider(provider)
    return provider


def current_trace_id() -> str:
    """The hex trace id of the active span, or '' outside any span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def grpc_server_interceptors(root_sample_rate: float = 1.0) -> list[GrpcServerTracing]:
    """Server spans for RPCs (never health checks): see `GrpcServerTracing`."""
    return [GrpcServerTracing(root_sample_rate)]


# Status codes that mean the server failed (OpenTelemetry's semantic conventions for gRPC servers);
# the others are the caller's doing and leave the span's status unset.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class GrpcServerTracing(MethodInterceptor):
    """A SERVER span per traced RPC, named `/package.Service/Method` with `rpc.system`, `rpc.service`,
    `rpc.method` and `rpc.grpc.status_code`, as opentelemetry-instrumentation-grpc names them.

    A call that carries a W3C `traceparent` is traced as a child of the caller's span (the SDK's
    sampler honours the caller's sampled flag); a call without one starts a new trace with
    probability `root_sample_rate`. Untraced calls run the plain handler: no span, no wrapper.
    """

    def __init__(
        self, root_sample_rate: float = 1.0, tracer_provider: trace.TracerProvider | None = None
    ) -> None:
        super().__init__()
        self.root_sample_rate = root_sample_rate
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    def applies(self, call: grpc.HandlerCallDetails) -> bool:
        """Traced: a call that carries a trace context, and a sampled share of the others."""
        for key, _ in call.invocation_metadata or ():
            if key == "traceparent":
                return True
        return random.random() < self.root_sample_rate

    def wrap_unary_response(self, behaviour: Behaviour, rpc: RpcMethod) -> Behaviour:
        async def traced(request: Any, context: Any) -> Any:
            with self._span(rpc, context):
                result = behaviour(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result

        return traced

    def wrap_stream_response(self, behaviour: Behaviour, rpc: RpcMethod) -> Behaviour:
        async def traced(request: Any, context: Any) -> AsyncIterator[Any]:
            with self._span(rpc, context):
                async for response in behaviour(request, context):
                    yield response

        return traced

    @contextmanager
    def _span(self, rpc: RpcMethod, context: Any) -> Iterator[trace.Span]:
        """The call's span, current while it runs, with the status the call ended with."""
        parent = propagate.extract(dict(context.invocation_metadata() or ()))
        attributes = {"rpc.system": "grpc", "rpc.service": rpc.service, "rpc.method": rpc.method}
        with self._tracer.start_as_current_span(
            rpc.path,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except grpc.aio.AbortError:  # the servicer chose a status: context.code() has it
                _set_status(span, context.code() or grpc.StatusCode.UNKNOWN, context.details())
                raise
            except BaseException as exc:
                span.record_exception(exc)
                _set_status(span, _status_of(exc), str(exc))
                raise
            _set_status(span, context.code() or grpc.StatusCode.OK, context.details())


def _status_of(exc: BaseException) -> grpc.StatusCode:
    return grpc.StatusCode.CANCELLED if isinstance(exc, asyncio.CancelledError) else grpc.StatusCode.UNKNOWN


def _set_status(span: trace.Span, code: grpc.StatusCode, details: str | None) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details or ''}"))
