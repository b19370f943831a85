"""The errors the CLI turns into a one-line message instead of a traceback::

    CliError        a failure the user can act on; the message says what to do
    └── ClientError a call to a service failed (cascade.cli.client)
        └── DemoError  the demo cannot go on (cascade.cli.demo)

The launcher's failures stay its own (cascade.stack's StackError, cascade.stack.kafka_broker's
BrokerError), and the CLI reports them the same way, with EXIT_FAILURE.

Each error carries the exit code the command ends with (listed in `cascade --help`)::

    1  EXIT_FAILURE      anything else: the stack, a service's own failure, a failed run
    2  EXIT_USAGE        a bad command line, or a request the service refused (INVALID_ARGUMENT)
    3  EXIT_NOT_FOUND    no such model, version, dataset or spec (NOT_FOUND)
    4  EXIT_UNAVAILABLE  the service cannot be reached: is the stack up? (UNAVAILABLE)
    5  EXIT_DENIED       the caller is not known, or may not do this (UNAUTHENTICATED, PERMISSION_DENIED)
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_DENIED",
    "EXIT_FAILURE",
    "EXIT_NOT_FOUND",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliError",
    "ClientError",
    "DemoError",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2  # also what click uses for a bad command line
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_DENIED = 5

EXIT_CODES_HELP = (
    f"Exit codes: 0 done; {EXIT_FAILURE} failed; {EXIT_USAGE} bad usage or a request the service "
    f"refused; {EXIT_NOT_FOUND} no such model, version or dataset; {EXIT_UNAVAILABLE} a service "
    f"cannot be reached (is the stack up?); {EXIT_DENIED} not authenticated, or not allowed."
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
