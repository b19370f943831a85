"""gRPC server metrics in the names grpc-ecosystem's go-grpc-prometheus made familiar
(`grpc_server_handled_total`, `grpc_server_handling_seconds`), as one server interceptor."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter, Histogram

__all__ = ["GrpcMetricsInterceptor"]

HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time the server took to complete an RPC.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_HEALTH = "grpc.health.v1.Health"

# grpc-stubs makes the interceptor generic for type checkers only; at run time it is a plain class.
if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class GrpcMetricsInterceptor(_ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if handler is None or service == _HEALTH:
            return handler
        rpc_type = _rpc_type(handler)
        behaviour = getattr(handler, rpc_type)
        labels = (service, method, rpc_type)
        wrapped = (
            _wrap_stream(behaviour, labels) if handler.response_streaming else _wrap_unary(behaviour, labels)
        )
        factory = getattr(grpc, f"{rpc_type}_rpc_method_handler")
        new_handler: grpc.RpcMethodHandler[Any, Any] = factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return new_handler


def _rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    request = "stream" if handler.request_streaming else "unary"
    response = "stream" if handler.response_streaming else "unary"
    return f"{request}_{response}"


def _code(context: Any, failed: bool) -> str:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return str(getattr(code, "name", code))


def _record(labels: tuple[str, str, str], started: float, context: Any, failed: bool) -> None:
    HANDLING_SECONDS.labels(*labels).observe(time.perf_counter() - started)
    HANDLED.labels(*labels, _code(context, failed)).inc()


def _wrap_unary(behaviour: Any, labels: tuple[str, str, str]) -> Any:
    async def wrapper(request: Any, context: Any) -> Any:
        started, failed = time.perf_counter(), True
        try:
            result = behaviour(request, context)
            if inspect.isawaitable(result):
                result = await result
            failed = False
            return result
        finally:
            _record(labels, started, context, failed)

    return wrapper


def _wrap_stream(behaviour: Any, labels: tuple[str, str, str]) -> Any:
    async def wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
        started, failed = time.perf_counter(), True
        try:
            async for response in behaviour(request, context):
                yield response
            failed = False
        finally:
            _record(labels, started, context, failed)

    return wrapper
