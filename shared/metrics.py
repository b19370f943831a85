"""gRPC server metrics in the names grpc-ecosystem's go-grpc-prometheus made familiar
(`grpc_server_handled_total`, `grpc_server_handling_seconds`), as one server interceptor.

Each method is wrapped once with its label children bound, so a call costs one histogram
observation and one counter increment, not a `labels()` lookup per metric.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import Counter, Histogram

from cascade.interceptors import Behaviour, MethodInterceptor, RpcMethod

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


class GrpcMetricsInterceptor(MethodInterceptor):
    """Counts and times every RPC (but health checks: see MethodInterceptor)."""

    def wrap_unary_response(self, behaviour: Behaviour, rpc: RpcMethod) -> Behaviour:
        record = _Recorder(rpc)

        async def measured(request: Any, context: Any) -> Any:
            started, failed = time.perf_counter(), True
            try:
                result = behaviour(request, context)
                if inspect.isawaitable(result):
                    result = await result
                failed = False
                return result
            finally:
                record(started, context, failed)

        return measured

    def wrap_stream_response(self, behaviour: Behaviour, rpc: RpcMethod) -> Behaviour:
        record = _Recorder(rpc)

        async def measured(request: Any, context: Any) -> AsyncIterator[Any]:
            started, failed = time.perf_counter(), True
            try:
                async for response in behaviour(request, context):
                    yield response
                failed = False
            finally:
                record(started, context, failed)

        return measured


class _Recorder:
    """One method's metric children, bound once."""

    def __init__(self, rpc: RpcMethod) -> None:
        self._labels = (rpc.service, rpc.method, rpc.type)
        self._seconds = HANDLING_SECONDS.labels(*self._labels)
        self._handled: dict[str, Any] = {"OK": HANDLED.labels(*self._labels, "OK")}

    def __call__(self, started: float, context: Any, failed: bool) -> None:
        self._seconds.observe(time.perf_counter() - started)
        code = _code(context, failed)
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = HANDLED.labels(*self._labels, code)
        handled.inc()


def _code(context: Any, failed: bool) -> str:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return str(getattr(code, "name", code))
