"""OpenTelemetry set-up shared by every service and the CLI.

Exporters are chosen by the standard `OTEL_TRACES_EXPORTER` (comma-separated names looked up in the
`opentelemetry_traces_exporter` entry-point group, so `console` and any installed exporter work;
`otlp` follows `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or, the spec's default, `http/protobuf`).
Cascade adds `otlp_json_file`: OTLP-JSON lines written to `CASCADE_TRACES_FILE`, the format of the
Collector's file exporter, which `cascade trace` reads without any backend.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

__all__ = [
    "OtlpJsonFileSpanExporter",
    "current_trace_id",
    "grpc_client_interceptors",
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


def grpc_server_interceptors() -> list[Any]:
    """Server spans for every RPC except health checks, which would drown the traces."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    return [aio_server_interceptor(filter_=filters.negate(filters.health_check()))]


def grpc_client_interceptors() -> list[Any]:
    """Client spans that also carry the trace context to the server in gRPC metadata."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors, filters

    interceptors: list[Any] = aio_client_interceptors(filter_=filters.negate(filters.health_check()))
    return interceptors
