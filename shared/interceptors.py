"""The base of the server interceptors every service carries (metrics, tracing): each wraps a method's
behaviour once, on the method's first call, and hands grpc the same wrapped handler on every later
call. grpc.aio asks the interceptors on every call; building a new handler and closure each time,
as a naive interceptor does, is a measurable share of a fast RPC (see bench/RESULTS.md, Serving).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

__all__ = [
    "Behaviour",
    "Deserializer",
    "Handler",
    "MethodInterceptor",
    "RequestDecodingInterceptor",
    "RpcMethod",
]

HEALTH_SERVICE = "grpc.health.v1.Health"

# A string: grpc.RpcMethodHandler is generic for type checkers only.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Behaviour: TypeAlias = Callable[..., Any]
Deserializer: TypeAlias = Callable[[bytes], Any]

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

    def wrap_request_deserializer(self, deserializer: Deserializer, rpc: RpcMethod) -> Deserializer:
        """The request decoding of a method whose request is one message (unary_*)."""
        return deserializer

    def _wrap_handler(self, rpc: RpcMethod, handler: Handler) -> Handler:
        if rpc.service == HEALTH_SERVICE:
            return handler
        behaviour = getattr(handler, rpc.type)
        if handler.response_streaming:
            wrapped = self.wrap_stream_response(behaviour, rpc)
        else:
            wrapped = self.wrap_unary_response(behaviour, rpc)
        deserializer = handler.request_deserializer
        if deserializer is not None and not handler.request_streaming:
            deserializer = self.wrap_request_deserializer(deserializer, rpc)
        if wrapped is behaviour and deserializer is handler.request_deserializer:
            return handler
        factory = getattr(grpc, f"{rpc.type}_rpc_method_handler")
        new_handler: Handler = factory(
            wrapped,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
        return new_handler


class _UndecodableRequest:
    """Stands for a request whose bytes did not decode, until the behaviour can refuse it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class RequestDecodingInterceptor(MethodInterceptor):
    """Answers a unary request that is not a valid protobuf message with INVALID_ARGUMENT.

    grpc.aio decodes a unary request before any handler runs, and a decoding error there is answered
    UNKNOWN ("Unexpected DecodeError"): not the caller's fault as far as the status says. Decoding
    instead yields a stand-in that the wrapped behaviour refuses with a short message. Streamed
    requests decode as the handler reads them, where `cascade.grpc_io.split_upload` refuses them."""

    def wrap_request_deserializer(self, deserializer: Deserializer, rpc: RpcMethod) -> Deserializer:
        def decode(data: bytes) -> Any:
            try:
                return deserializer(data)
            except Exception as exc:
                return _UndecodableRequest(exc)

        return decode

    def wrap_unary_response(self, behaviour: Behaviour, rpc: RpcMethod) -> Behaviour:
        async def refusing(request: Any, context: Any) -> Any:
            if isinstance(request, _UndecodableRequest):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(rpc, request))
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result

        return refusing

    def wrap_stream_response(self, behaviour: Behaviour, rpc: RpcMethod) -> Behaviour:
        async def refusing(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, _UndecodableRequest):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(rpc, request))
            async for response in behaviour(request, context):
                yield response

        return refusing


def _refusal(rpc: RpcMethod, request: _UndecodableRequest) -> str:
    return f"the request to {rpc.method} is not a valid protobuf message ({type(request.error).__name__})"
