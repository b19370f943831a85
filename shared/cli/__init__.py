"""The `cascade` command: an application of the client library (cascade.client) and of the local
stack launcher (cascade.stack)."""

from cascade.cli.errors import ClientError, CliError

__all__ = ["CliError", "ClientError"]
