"""The errors the CLI turns into a one-line message instead of a traceback::

    CliError        a failure the user can act on; the message says what to do
    ├── StackError  the stack could not be started or stopped (shared.cli.stack)
    └── ClientError a call to a service failed (shared.cli.client)
        └── DemoError  the demo cannot go on (shared.cli.demo)

Kafka launcher failures stay `shared.kafka_broker.BrokerError`, which the CLI reports the same way.
"""

from __future__ import annotations

__all__ = ["CliError", "ClientError", "DemoError", "StackError"]


class CliError(RuntimeError):
    """A failure the user can act on; the message says what to do."""


class StackError(CliError):
    """The stack could not be started or stopped; the message says why and where to look."""


class ClientError(CliError):
    """A call to a Cascade service failed; the message says what to do about it."""


class DemoError(ClientError):
    """The demo cannot go on; the message says why and what to look at."""
