"""One error hierarchy for every service, mapped once to gRPC status codes and Kafka outcomes.

    CascadeError
    ├── InvalidArgument      bad input: gRPC INVALID_ARGUMENT, Kafka dead-letter
    ├── NotFound             gRPC NOT_FOUND, Kafka dead-letter
    ├── AlreadyExists        gRPC ALREADY_EXISTS
    ├── FailedPrecondition   gRPC FAILED_PRECONDITION, Kafka dead-letter
    └── Unavailable          a dependency is down: gRPC UNAVAILABLE, Kafka redelivery

Transports decide what an error means for delivery: a *permanent* error will fail the same way
on every retry, so its message goes to the dead-letter topic; anything else is retried.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc

__all__ = [
    "AlreadyExists",
    "CascadeError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
    "grpc_errors",
    "is_permanent",
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


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying the work that raised `exc` would fail the same way."""
    from pydantic import ValidationError

    if isinstance(exc, CascadeError):
        return exc.permanent
    if isinstance(exc, ValidationError | ValueError | UnicodeDecodeError):
        return True
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _PERMANENT_GRPC_CODES
    return False


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Turn `CascadeError` raised by a servicer method into the matching gRPC status.

    Works for unary and server-streaming methods; anything unexpected becomes INTERNAL
    with the error logged, so the server stays up.
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
                await context.abort(exc.status, str(exc))
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                log.exception("unhandled error in %s", method.__qualname__)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")

        return cast(F, stream_wrapper)

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await cast(Callable[..., Awaitable[Any]], method)(self, request, context)
        except CascadeError as exc:
            await context.abort(exc.status, str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("unhandled error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")

    return cast(F, unary_wrapper)
