"""The CLI's one mapping from a failed call (a Cascade error, as cascade.client raises it for a gRPC
status) to the message and exit code a command ends with."""

from __future__ import annotations

import grpc
import pytest

from cascade.cli.errors import (
    EXIT_DENIED,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    failure_of,
)
from cascade.errors import error_from_rpc


class _Failed(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failed blocking call as grpc raises it: an RpcError that is also a Call with a status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> None: ...
    def trailing_metadata(self) -> None: ...
    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None: ...
    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: object) -> bool:
        return False


@pytest.mark.parametrize(
    ("code", "exit_code", "says"),
    [
        (grpc.StatusCode.NOT_FOUND, EXIT_NOT_FOUND, "(NOT_FOUND)"),
        (grpc.StatusCode.INVALID_ARGUMENT, EXIT_USAGE, "refused the request"),
        (grpc.StatusCode.FAILED_PRECONDITION, EXIT_USAGE, "(FAILED_PRECONDITION)"),
        (grpc.StatusCode.UNAVAILABLE, EXIT_UNAVAILABLE, "Is the stack up? Start it with `cascade up`."),
        (grpc.StatusCode.DEADLINE_EXCEEDED, EXIT_UNAVAILABLE, "(DEADLINE_EXCEEDED). Is the stack up?"),
        (grpc.StatusCode.UNAUTHENTICATED, EXIT_DENIED, "pass --token or set CASCADE_TOKEN"),
        (grpc.StatusCode.PERMISSION_DENIED, EXIT_DENIED, "refused the caller"),
        (grpc.StatusCode.INTERNAL, EXIT_FAILURE, "(INTERNAL)"),
        (grpc.StatusCode.ALREADY_EXISTS, EXIT_FAILURE, "(ALREADY_EXISTS)"),
    ],
)
def test_each_status_ends_the_command_with_its_code_and_says_what_failed(
    code: grpc.StatusCode, exit_code: int, says: str
) -> None:
    error = error_from_rpc(_Failed(code, "the details"), "registry at 127.0.0.1:1: reading model m")

    failure = failure_of(error)

    assert failure.exit_code == exit_code
    message = str(failure)
    assert says in message
    # What was being done, where, and the service's own words all reach the user.
    assert "registry at 127.0.0.1:1: reading model m: the details" in message
    assert "\n" not in message
