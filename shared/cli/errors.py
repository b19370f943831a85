"""The errors the CLI turns into a one-line message instead of a traceback::

    CliError        a failure the user can act on; the message says what to do
    └── ClientError a call to a service failed (cascade.cli.client)
        └── DemoError  the demo cannot go on (cascade.cli.demo)

The launcher's failures stay its own (cascade.stack's StackError, cascade.stack.kafka_broker's
BrokerError), and the CLI reports them the same way, with EXIT_FAILURE.

A failed call to a service reaches the CLI as a Cascade error (cascade.errors, made from the call's
gRPC status by cascade.client); `failure_of` is the one place it becomes a message and an exit code.
Each error carries the exit code the command ends with (listed in `cascade --help`)::

    1  EXIT_FAILURE      anything else: the stack, a service's own failure, a failed run
    2  EXIT_USAGE        a bad command line, or a request the service refused (INVALID_ARGUMENT)
    3  EXIT_NOT_FOUND    no such model, version, dataset or spec (NOT_FOUND)
    4  EXIT_UNAVAILABLE  the service cannot be reached: is the stack up? (UNAVAILABLE)
    5  EXIT_DENIED       the caller is not known, or may not do this (UNAUTHENTICATED, PERMISSION_DENIED)
    6  EXIT_TIMEOUT      a followed cascade (`--follow`) did not end within its --timeout

A followed cascade that fails ends with the code of its stage: a refused training request or a
failed run EXIT_FAILURE, a version that failed validation EXIT_USAGE (as FAILED_PRECONDITION).
"""

from __future__ import annotations

from cascade.errors import (
    CascadeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_DENIED",
    "EXIT_FAILURE",
    "EXIT_NOT_FOUND",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliError",
    "ClientError",
    "DemoError",
    "failure_of",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2  # also what click uses for a bad command line
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_DENIED = 5
EXIT_TIMEOUT = 6

EXIT_CODES_HELP = (
    f"Exit codes: 0 done; {EXIT_FAILURE} failed; {EXIT_USAGE} bad usage, a request the service "
    f"refused, or a followed version that failed validation; {EXIT_NOT_FOUND} no such model, version "
    f"or dataset; {EXIT_UNAVAILABLE} a service cannot be reached (is the stack up?); {EXIT_DENIED} not "
    f"authenticated, or not allowed; {EXIT_TIMEOUT} a followed cascade did not end in time."
)


class CliError(RuntimeError):
    """A failure the user can act on; the message says what to do."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ClientError(CliError):
    """A call to a Cascade service failed; the message says what to do about it."""


class DemoError(ClientError):
    """The demo cannot go on; the message says why and what to look at."""


def failure_of(error: CascadeError) -> ClientError:
    """The one-line message and exit code of a failed call. The error already names the service and
    what was being done; the status is added, and for an unreachable service what to run, for an
    unknown caller where a token comes from."""
    status = error.status.name
    if isinstance(error, Unavailable):
        message = f"cannot reach {error} ({status}). Is the stack up? Start it with `cascade up`."
        return ClientError(message, EXIT_UNAVAILABLE)
    if isinstance(error, Unauthenticated):
        return ClientError(
            f"the service does not know the caller: {error}; pass --token or set CASCADE_TOKEN (a "
            "stack started here keeps its admin token in HOME/secrets/admin.token)",
            EXIT_DENIED,
        )
    if isinstance(error, PermissionDenied):
        return ClientError(f"the service refused the caller: {error} ({status})", EXIT_DENIED)
    if isinstance(error, InvalidArgument):
        return ClientError(f"the service refused the request: {error}", EXIT_USAGE)
    if isinstance(error, FailedPrecondition):
        return ClientError(f"{error} ({status})", EXIT_USAGE)
    if isinstance(error, NotFound):
        return ClientError(f"{error} ({status})", EXIT_NOT_FOUND)
    return ClientError(f"{error} ({status})", EXIT_FAILURE)
