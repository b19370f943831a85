"""The `cascade` command and the programmatic stack API it shares with the integration tests."""

from cascade.cli.errors import ClientError, CliError, StackError
from cascade.cli.stack import SERVICES, ServiceStatus, Stack, StackConfig

__all__ = ["SERVICES", "CliError", "ClientError", "ServiceStatus", "Stack", "StackConfig", "StackError"]
