"""Client calls of the CLI that any command may make: uploading a batch to ingest, traced.

Failures surface as `ClientError` with a message fit for a terminal, never a gRPC traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import grpc
import typer
from opentelemetry import trace

from cascade.cli.errors import (
    EXIT_DENIED,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ClientError,
)
from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.grpc_io import CHUNK_SIZE, file_chunks, open_blocking_channel, open_channel
from cascade.stack import Stack, StackConfig
from cascade.stack.identities import cli_security
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.telemetry import current_trace_id, setup_tracing

__all__ = [
    "ClientError",
    "FileFormat",
    "IngestResult",
    "TokenOption",
    "cli_channel",
    "describe_rpc_error",
    "format_of",
    "ingest_file",
    "rpc_failure",
    "security_of",
    "setup_cli_tracing",
    "stack_config",
    "upload_requests",
]

_FORMATS_BY_SUFFIX = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_tracing_ready = False


class FileFormat(StrEnum):
    csv = "csv"
    parquet = "parquet"

    @property
    def proto(self) -> ingest_pb2.FileFormat.ValueType:
        return ingest_pb2.FILE_FORMAT_PARQUET if self is FileFormat.parquet else ingest_pb2.FILE_FORMAT_CSV


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
        return FileFormat(_FORMATS_BY_SUFFIX[path.suffix.lower()])
    except KeyError:
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


def upload_requests(
    path: Path, header: ingest_pb2.BatchHeader, chunk_size: int = CHUNK_SIZE
) -> Iterator[ingest_pb2.UploadBatchRequest]:
    """The UploadBatch stream: the header first, then the file in chunks."""
    yield ingest_pb2.UploadBatchRequest(header=header)
    for _offset, data in file_chunks(path, chunk_size=chunk_size):
        yield ingest_pb2.UploadBatchRequest(chunk=data)


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
    header = ingest_pb2.BatchHeader(
        dataset=dataset, format=(file_format or format_of(path)).proto, target=target, source=path.name
    )
    tracer = trace.get_tracer("cascade.cli")
    with tracer.start_as_current_span("cascade ingest") as span:
        span.set_attribute("cascade.dataset", dataset)
        span.set_attribute("cascade.source", path.name)
        trace_id = current_trace_id()
        # asyncio.run copies the current context, so the client interceptor sees the span.
        response = asyncio.run(_upload(address, path, header, security))
        span.set_attribute("cascade.dataset_version", response.dataset_version)
    _flush_spans()
    return _result(path, dataset, response, trace_id)


async def _upload(
    address: str, path: Path, header: ingest_pb2.BatchHeader, security: ClientSecurity
) -> ingest_pb2.UploadBatchResponse:
    async with open_channel(address, security) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        try:
            response: ingest_pb2.UploadBatchResponse = await stub.UploadBatch(upload_requests(path, header))
        except grpc.aio.AioRpcError as error:
            raise rpc_failure("ingest", address, error) from None
    return response


def _result(
    path: Path, dataset: str, response: ingest_pb2.UploadBatchResponse, trace_id: str
) -> IngestResult:
    report = response.report
    return IngestResult(
        source=path.name,
        dataset=dataset,
        batch_id=response.batch_id,
        dataset_version=response.dataset_version,
        created=response.created,
        rows_received=report.rows_received,
        rows_accepted=report.rows_accepted,
        rows_rejected=report.rows_rejected,
        rows_duplicate=report.rows_duplicate,
        rejected=[(row.row, row.reason) for row in report.rejected],
        trace_id=trace_id,
        event_pending=response.event_pending,
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


@contextlib.contextmanager
def cli_channel(config: StackConfig, address: str, token: str = "") -> Iterator[grpc.Channel]:
    """A blocking channel to one of the stack's services, with the CLI's credentials."""
    with open_blocking_channel(address, security_of(config, token)) as channel:
        yield channel


def rpc_failure(service: str, address: str, error: grpc.RpcError) -> ClientError:
    """The `ClientError` for a failed call: its one-line message and the exit code its status
    maps to (NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE each have their own; see cascade.cli.errors)."""
    code = error.code() if isinstance(error, (grpc.Call, grpc.aio.AioRpcError)) else None
    exit_code = _EXIT_CODES.get(code, EXIT_FAILURE) if code is not None else EXIT_FAILURE
    return ClientError(describe_rpc_error(service, address, error), exit_code)


_EXIT_CODES = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_USAGE,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
}


def describe_rpc_error(service: str, address: str, error: grpc.RpcError) -> str:
    """One line saying what went wrong in a call, and for an unreachable service what to run."""
    # Sync errors are also a grpc.Call; aio errors are not, but carry the same accessors.
    has_status = isinstance(error, (grpc.Call, grpc.aio.AioRpcError))
    code = error.code() if has_status else None
    details = (error.details() if has_status else None) or str(error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return (
            f"cannot reach {service} at {address} ({details}). Is the stack up? Start it with `cascade up`."
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return f"{service} refused the request: {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (
            f"{service} at {address} does not know the caller ({details}): pass --token or set "
            "CASCADE_TOKEN (a stack started here keeps its admin token in HOME/secrets/admin.token)"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"{service} at {address} refused: {details}"
    name = code.name if code is not None else "error"
    return f"{service} at {address} failed ({name}): {details}"


def _flush_spans() -> None:
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if callable(force_flush):
        force_flush()
