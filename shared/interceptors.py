"""The base of the server interceptors every service carries (metrics, tracing): each wraps a method's
behaviour once, on the method's first call, and hands grpc the same wrapped handler on every later
call. grpc.aio asks the interceptors on every call; building a new handler and closure each time,
as a naive interceptor does, is a measurable share of a fast RPC (see bench/RESULTS.md, Serving).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

__all__ = ["Behaviour", "Handler", "MethodInterceptor", "RpcMethod"]

HEALTH_SERVICE = "grpc.health.v1.Health"

# A string: grpc.RpcMethodHandler is generic for type checkers only.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Behaviour: TypeAlias = Callable[..., Any]

# grpc-stubs makes the interceptor generic for type checkers only; at run time it is a plain class.
if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


@dataclass(frozen=True)
class RpcMethod:
    """One method of a service, named as gRPC's metrics and OpenTelemetry's rpc.* attributes name it."""

    path: str  # /package.Service/Method
    service: str  # package.Service
    method: str  # Method
    type: str  # unary_unary, unary_stream, stream_unary or stream_stream

    @classmethod
    def of(cls, path: str, handler: Handler) -> RpcMethod:
        service, _, method = path.lstrip("/").rpartition("/")
        request = "stream" if handler.request_streaming else "unary"
        response = "stream" if handler.response_streaming else "unary"
        return cls(path, service, method, f"{request}_{response}")


class MethodInterceptor(_ServerInterceptor):
    """Subclasses say how to wrap one method's behaviour; returning it unchanged leaves the method
    alone. Health checks are never wrapped: probes call them every few seconds, and they would drown
    the metrics and traces. `applies` may pick, call by call, the plain handler instead."""

    def __init__(self) -> None:
        # By method path: the handler grpc found and the one wrapped from it.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        # None: an unknown method, which grpc answers with UNIMPLEMENTED.
        if handler is None or not self.applies(handler_call_details):
            return handler
        return self.wrapped(handler_call_details.method, handler)

    def applies(self, call: grpc.HandlerCallDetails) -> bool:
        """Whether this call runs the wrapped handler (by default, every call does)."""
        return True

    def wrapped(self, path: str, handler: Handler) -> Handler:
        """`handler` with its behaviour wrapped, built on the first call only."""
        known = self._wrapped.get(path)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap_handler(RpcMethod.of(path, handler), handler)
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def wrap_unary_response(self, behaviour: Behaviour, rpc: RpcMethod) -> Behaviour:
        """The wrapped behaviour of a method answering one message (unary_unary, stream_unary)."""
        return behaviour

    def wrap_stream_response(self, behaviour: Behaviour, rpc: RpcMethod) -> Behaviour:
        """The wrapped behaviour of a method answering a stream (unary_stream, stream_stream)."""
        return behaviour

    def _wrap_handler(self, rpc: RpcMethod, handler: Handler) -> Handler:
        if rpc.service == HEALTH_SERVICE:
            return handler
        behaviour = getattr(handler, rpc.type)
        if handler.response_streaming:
            wrapped = self.wrap_stream_response(behaviour, rpc)
        else:
            wrapped = self.wrap_unary_response(behaviour, rpc)
        if wrapped is behaviour:
            return handler
        factory = getattr(grpc, f"{rpc.type}_rpc_method_handler")
        new_handler: Handler = factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return new_handler
