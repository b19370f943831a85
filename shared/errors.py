"""One error hierarchy for every service, mapped once to gRPC status codes and Kafka outcomes.

    CascadeError
    ├── InvalidArgument      bad input: gRPC INVALID_ARGUMENT, Kafka dead-letter
    ├── NotFound             gRPC NOT_FOUND, Kafka dead-letter
    ├── AlreadyExists        gRPC ALREADY_EXISTS
    ├── FailedPrecondition   gRPC FAILED_PRECONDITION, Kafka dead-letter
    ├── Unauthenticated      gRPC UNAUTHENTICATED
    ├── PermissionDenied     gRPC PERMISSION_DENIED
    ├── Unavailable          a dependency is down: gRPC UNAVAILABLE, Kafka redelivery
    └── RemoteFailure        another service failed in a way none of the above names (INTERNAL, ...)

The same tree serves both directions: a server raises these and `grpc_errors` sends their status;
a client gets them back from `error_from_rpc`, the one place a gRPC status becomes an exception
(cascade.client calls it for every RPC), so every caller handles `NotFound` rather than status codes.

Transports decide what an error means for delivery (`classify`); no message is retried forever:

    permanent    fails the same way on every try: dead-lettered at once
    │              CascadeError but Unavailable, pydantic ValidationError, ValueError (JSON too),
    │              UnicodeDecodeError, RecursionError and MemoryError (a hostile body, not a fluke),
    │              gRPC INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, UNAUTHENTICATED, ...
    transient    a dependency that comes back: retried with capped exponential backoff within the
    │              consumer's budget (`retry_max_attempts` tries and `retry_max_seconds`)
    │              Unavailable, gRPC UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED/ABORTED,
    │              Kafka errors, ConnectionError, TimeoutError, OSError
    unknown      anything else (KeyError, AttributeError, ...): most likely a bug that fails again,
                   yet perhaps a library's transient fault nobody classified; so it is retried,
                   but within the same budget and at most `retry_unknown_max_attempts` tries.

A message whose budget runs out goes to the dead-letter topic with `retries exhausted after N
attempts: <last error>`. gRPC status messages are cut to `MAX_STATUS_MESSAGE_BYTES`, since they
often quote the caller's input.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar, cast

import grpc

__all__ = [
    "MAX_STATUS_MESSAGE_BYTES",
    "AlreadyExists",
    "CascadeError",
    "ErrorKind",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RemoteFailure",
    "Unauthenticated",
    "Unavailable",
    "classify",
    "error_from_rpc",
    "grpc_errors",
    "is_permanent",
    "truncate",
]

log = logging.getLogger(__name__)


class CascadeError(Exception):
    """Base of every error that Cascade raises on purpose."""

    status = grpc.StatusCode.INTERNAL
    permanent = True


class InvalidArgument(CascadeError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CascadeError):
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CascadeError):
    status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CascadeError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(CascadeError):
    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CascadeError):
    status = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(CascadeError):
    status = grpc.StatusCode.UNAVAILABLE
    permanent = False


class RemoteFailure(CascadeError):
    """A call failed with a status Cascade raises for no reason of its own (INTERNAL, UNKNOWN,
    UNIMPLEMENTED, ...): most likely a bug on the far side. `classify` calls it unknown, so work
    that met it is retried, within its budget."""


_ERRORS_BY_STATUS: dict[grpc.StatusCode, type[CascadeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    # "Try again later": the service is down, slow, overloaded or asked the caller to retry.
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Unavailable,
    grpc.StatusCode.ABORTED: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
}


def error_from_rpc(error: grpc.RpcError, what: str) -> CascadeError:
    """The Cascade error for a failed call, saying `what` was being done: "registry: reading m v3:
    version 3 of m not found". Its `status` is the call's own status code."""
    # Blocking calls' errors are grpc.Call; grpc.aio's are AioRpcError; both carry code/details.
    has_status = isinstance(error, grpc.Call | grpc.aio.AioRpcError)
    code = error.code() if has_status else grpc.StatusCode.UNKNOWN
    details = (error.details() if has_status else None) or str(error) or code.name
    failure = _ERRORS_BY_STATUS.get(code, RemoteFailure)(truncate(f"{what}: {details}"))
    failure.status = code
    return failure


_PERMANENT_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


_TRANSIENT_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)

ErrorKind = Literal["permanent", "transient", "unknown"]


def classify(exc: BaseException) -> ErrorKind:
    """Whether retrying the work that raised `exc` would fail the same way (the tree above)."""
    from aiokafka.errors import KafkaError
    from pydantic import ValidationError

    if isinstance(exc, RemoteFailure):
        return "unknown"
    if isinstance(exc, CascadeError):
        return "permanent" if exc.permanent else "transient"
    if isinstance(exc, ValidationError | ValueError | UnicodeDecodeError | RecursionError | MemoryError):
        return "permanent"
    if isinstance(exc, grpc.aio.AioRpcError):
        if exc.code() in _PERMANENT_GRPC_CODES:
            return "permanent"
        return "transient" if exc.code() in _TRANSIENT_GRPC_CODES else "unknown"
    if isinstance(exc, KafkaError | ConnectionError | TimeoutError | OSError):
        return "transient"
    return "unknown"


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying the work that raised `exc` would fail the same way."""
    return classify(exc) == "permanent"


# A gRPC status message travels as a header (grpc-message): one quoting a huge input would exceed
# the client's metadata limit, which then reports RESOURCE_EXHAUSTED instead of the real status.
MAX_STATUS_MESSAGE_BYTES = 400


def truncate(text: str, limit: int = MAX_STATUS_MESSAGE_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (on a character boundary), saying how much was cut."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    note = f"... ({len(encoded)} bytes in all)"
    kept = encoded[: max(limit - len(note), 0)].decode("utf-8", "ignore")
    return kept + note


def _unexpected(method: Callable[..., Any], exc: Exception) -> str:
    # The caller learns only the type: the text may quote a huge input or a secret. The log keeps
    # the traceback for whoever fixes the bug.
    log.error("unhandled %s in %s", type(exc).__name__, method.__qualname__, exc_info=exc)
    return truncate(f"internal error: {type(exc).__name__}")


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Turn `CascadeError` raised by a servicer method into the matching gRPC status.

    Works for unary and server-streaming methods; anything unexpected becomes INTERNAL naming only
    the exception's type, with the error logged, so the server stays up. Every status message is
    cut to `MAX_STATUS_MESSAGE_BYTES`.
    """
    import inspect

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(
            self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except CascadeError as exc:
                await context.abort(exc.status, truncate(str(exc)))
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await context.abort(grpc.StatusCode.INTERNAL, _unexpected(method, exc))

        return cast(F, stream_wrapper)

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await cast(Callable[..., Awaitable[Any]], method)(self, request, context)
        except CascadeError as exc:
            await context.abort(exc.status, truncate(str(exc)))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await context.abort(grpc.StatusCode.INTERNAL, _unexpected(method, exc))

    return cast(F, unary_wrapper)
