"""What any command may use to reach a stack: its credentials, and uploading a batch to ingest,
traced. Calls go through the typed clients of cascade.client, whose Cascade errors the command
turns into a message and an exit code (cascade.cli.errors.failure_of), never a gRPC traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from opentelemetry import trace

from cascade.cli.errors import ClientError
from cascade.client.calls import RemoteService
from cascade.client.channels import PLAINTEXT, ClientSecurity, open_channel
from cascade.client.ingest import IngestClient, file_format_of
from cascade.client.records import UploadResult
from cascade.errors import InvalidArgument
from cascade.stack import Stack, StackConfig
from cascade.stack.identities import cli_security
from cascade.telemetry import current_trace_id, setup_tracing

__all__ = [
    "ClientError",
    "FileFormat",
    "IngestResult",
    "TokenOption",
    "format_of",
    "ingest_file",
    "remote_service",
    "security_of",
    "setup_cli_tracing",
    "stack_config",
]

_tracing_ready = False


class FileFormat(StrEnum):
    csv = "csv"
    parquet = "parquet"


@dataclass(frozen=True)
class IngestResult:
    source: str
    dataset: str
    batch_id: str
    dataset_version: str
    created: bool
    rows_received: int
    rows_accepted: int
    rows_rejected: int
    rows_duplicate: int
    # (row, reason) of the first rejected rows, as ingest reported them.
    rejected: list[tuple[int, str]]
    trace_id: str
    # The version is stored; its data-arrived event waits in ingest's outbox until Kafka takes it.
    event_pending: bool = False


def format_of(path: Path) -> FileFormat:
    """The batch format implied by a file's suffix."""
    try:
        return FileFormat(file_format_of(path))
    except InvalidArgument:
        raise ClientError(f"cannot tell the format of {path.name} from its suffix; pass --format") from None


def setup_cli_tracing(stack: Stack) -> None:
    """Trace this process as `cascade-cli`, into the stack's traces/cli.jsonl unless the caller
    chose an exporter. Once per process: OpenTelemetry refuses a second tracer provider."""
    global _tracing_ready  # noqa: PLW0603 - the provider it guards is process-global too
    if _tracing_ready:
        return
    # setup_tracing and the exporter it builds read os.environ; set our defaults only while they
    # do, so they never leak into the environment of services this process starts later.
    with _environment(stack.tracing_env("cli")):
        setup_tracing("cascade-cli", package_version())
    _tracing_ready = True


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cascade-mlops")
    except PackageNotFoundError:
        return "0.0.0"


def ingest_file(
    address: str,
    path: Path,
    dataset: str,
    target: str = "target",
    file_format: FileFormat | None = None,
    security: ClientSecurity = PLAINTEXT,
) -> IngestResult:
    """Upload one batch file to ingest inside a `cascade ingest` span, whose trace the cascade
    that follows continues; flushes the span so the trace is on disk when this returns."""
    if not path.is_file():
        raise ClientError(f"no such file: {path}")
    chosen = file_format or format_of(path)
    tracer = trace.get_tracer("cascade.cli")
    with tracer.start_as_current_span("cascade ingest") as span:
        span.set_attribute("cascade.dataset", dataset)
        span.set_attribute("cascade.source", path.name)
        trace_id = current_trace_id()
        # asyncio.run copies the current context, so the client interceptor sees the span.
        uploaded = asyncio.run(_upload(address, path, dataset, target, chosen, security))
        span.set_attribute("cascade.dataset_version", uploaded.dataset_version)
    _flush_spans()
    return _result(path, dataset, uploaded, trace_id)


async def _upload(
    address: str, path: Path, dataset: str, target: str, file_format: FileFormat, security: ClientSecurity
) -> UploadResult:
    async with IngestClient.connect(address, security) as ingest:
        return await ingest.upload_batch(path, dataset, target=target, file_format=file_format.value)


def _result(path: Path, dataset: str, uploaded: UploadResult, trace_id: str) -> IngestResult:
    report = uploaded.report
    return IngestResult(
        source=path.name,
        dataset=dataset,
        batch_id=uploaded.batch_id,
        dataset_version=uploaded.dataset_version,
        created=uploaded.created,
        rows_received=report.rows_received,
        rows_accepted=report.rows_accepted,
        rows_rejected=report.rows_rejected,
        rows_duplicate=report.rows_duplicate,
        rejected=[(row.row, row.reason) for row in report.rejected],
        trace_id=trace_id,
        event_pending=uploaded.event_pending,
    )


TokenOption = Annotated[
    str,
    typer.Option(
        envvar="CASCADE_TOKEN",
        help="Bearer token to call the services with [default: the admin token in HOME/secrets].",
        show_default=False,
    ),
]


def stack_config(ctx: typer.Context) -> StackConfig:
    """The stack a command talks to (the root callback put it in the context)."""
    return ctx.obj if isinstance(ctx.obj, StackConfig) else StackConfig()


def security_of(config: StackConfig, token: str = "") -> ClientSecurity:
    """The CLI's credentials for a stack: `token` (--token, CASCADE_TOKEN) or else the admin token
    the stack keeps in its home; TLS with the stack's CA when it serves TLS. For a stack this
    machine did not start (compose, Kubernetes), CASCADE_TLS_CA_FILE turns TLS on with that CA,
    presenting CASCADE_TLS_CERT_FILE and CASCADE_TLS_KEY_FILE when set (mTLS)."""
    security = cli_security(config.home.expanduser().resolve(), token, config.serves_tls)
    ca_file = os.environ.get("CASCADE_TLS_CA_FILE")
    if not ca_file:
        return security
    cert_file, key_file = os.environ.get("CASCADE_TLS_CERT_FILE"), os.environ.get("CASCADE_TLS_KEY_FILE")
    return ClientSecurity(
        token=security.token,
        ca_file=Path(ca_file),
        cert_file=Path(cert_file) if cert_file else None,
        key_file=Path(key_file) if key_file else None,
    )


@contextlib.asynccontextmanager
async def remote_service(
    config: StackConfig, name: str, address: str | None = None, token: str = ""
) -> AsyncIterator[RemoteService]:
    """Service `name` of the stack (or the one at `address`) as the typed clients and
    cascade.client.calls see it, on a channel with the CLI's credentials, closed on leaving."""
    where = address or Stack(config).address(name)
    async with open_channel(where, security_of(config, token)) as channel:
        yield RemoteService(name, channel, where)


def _flush_spans() -> None:
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if callable(force_flush):
        force_flush()
