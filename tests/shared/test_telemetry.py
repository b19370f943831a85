from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from cascade.errors import Unavailable, grpc_errors
from cascade.telemetry import GrpcServerTracing

SERVICE = "test.Echo"


class _Echo:
    @grpc_errors
    async def Echo(self, request: bytes, context: Any) -> bytes:
        return request

    @grpc_errors
    async def Fail(self, request: bytes, context: Any) -> bytes:
        raise Unavailable("down for the test")


class _Client:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    async def call(self, method: str, traceparent: str = "") -> bytes:
        metadata = (("traceparent", traceparent),) if traceparent else None
        answer: bytes = await self.channel.unary_unary(f"/{SERVICE}/{method}")(b"hi", metadata=metadata)
        return answer

    async def check_health(self) -> None:
        await health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest())


async def _serve(tracing: GrpcServerTracing) -> AsyncIterator[_Client]:
    echo = _Echo()
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo.Echo),
        "Fail": grpc.unary_unary_rpc_method_handler(echo.Fail),
    }
    server = grpc.aio.server(interceptors=[tracing])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield _Client(channel)
    await server.stop(None)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def _provider(spans: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider


@pytest.fixture
async def untraced_roots(spans: InMemorySpanExporter) -> AsyncIterator[_Client]:
    async for client in _serve(GrpcServerTracing(0.0, _provider(spans))):
        yield client


@pytest.fixture
async def every_root(spans: InMemorySpanExporter) -> AsyncIterator[_Client]:
    async for client in _serve(GrpcServerTracing(1.0, _provider(spans))):
        yield client


async def test_a_call_with_a_trace_context_gets_a_server_span_in_the_callers_trace(
    untraced_roots: _Client, spans: InMemorySpanExporter
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    await untraced_roots.call("Echo", f"00-{trace_id}-{parent_id}-01")
    (span,) = spans.get_finished_spans()
    assert span.name == f"/{SERVICE}/Echo" and span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent_id
    assert span.attributes == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Echo",
        "rpc.grpc.status_code": 0,
    }


async def test_calls_without_a_trace_context_start_traces_only_at_the_sample_rate(
    untraced_roots: _Client, every_root: _Client, spans: InMemorySpanExporter
) -> None:
    for _ in range(3):  # the same method, traced and not, call after call
        await untraced_roots.call("Echo")
        await untraced_roots.call("Echo", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01")
    assert len(spans.get_finished_spans()) == 3
    spans.clear()
    await every_root.call("Echo")
    (span,) = spans.get_finished_spans()
    assert span.parent is None and span.name == f"/{SERVICE}/Echo"


async def test_a_server_failure_is_the_spans_status(every_root: _Client, spans: InMemorySpanExporter) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await every_root.call("Fail")
    (span,) = spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert span.status.status_code == StatusCode.ERROR


async def test_health_checks_are_never_traced(every_root: _Client, spans: InMemorySpanExporter) -> None:
    await every_root.check_health()
    assert spans.get_finished_spans() == ()
