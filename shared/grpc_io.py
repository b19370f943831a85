"""gRPC client plumbing and chunked byte streams, shared by every service and the CLI."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from shared.errors import InvalidArgument
from shared.security import PLAINTEXT, ClientSecurity
from shared.service import GRPC_OPTIONS
from shared.telemetry import grpc_client_interceptors

__all__ = [
    "CHUNK_SIZE",
    "ReceivedFile",
    "ServicerContext",
    "file_chunks",
    "open_blocking_channel",
    "open_channel",
    "receive_to_file",
    "split_upload",
]

CHUNK_SIZE = 1024 * 1024

# What every servicer method receives; the request/response types add nothing for our servicers.
ServicerContext = grpc.aio.ServicerContext[Any, Any]


def open_channel(address: str, security: ClientSecurity = PLAINTEXT) -> grpc.aio.Channel:
    """A channel that traces its calls and carries the trace context; TLS and a bearer token on
    every call as `security` says (see shared.security)."""
    interceptors: list[Any] = grpc_client_interceptors()
    if security.token:
        interceptors += bearer_token_interceptors(security.token)
    credentials = security.channel_credentials
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=GRPC_OPTIONS, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=GRPC_OPTIONS, interceptors=interceptors)


def open_blocking_channel(address: str, security: ClientSecurity = PLAINTEXT) -> grpc.Channel:
    """The blocking counterpart of `open_channel`, for command-line tools and probes."""
    credentials = security.channel_credentials
    if credentials is not None:
        channel = grpc.secure_channel(address, credentials, options=GRPC_OPTIONS)
    else:
        channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
    if security.token:
        return grpc.intercept_channel(channel, _BlockingBearerToken(security.token))
    return channel


# grpc-stubs makes the interceptors generic for type checkers only; at run time they are plain classes.
if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class _BearerToken:
    """Adds `authorization: Bearer <token>` to a call's metadata. grpc.aio files each interceptor
    under one call type only, so there is one subclass per type (`bearer_token_interceptors`)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self.header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnaryToken(_BearerToken, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _UnaryStreamToken(_BearerToken, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _StreamUnaryToken(_BearerToken, _StreamUnary):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


class _StreamStreamToken(_BearerToken, _StreamStream):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


def bearer_token_interceptors(token: str) -> list[Any]:
    return [
        cls(token) for cls in (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    ]


class _BlockingCallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: Any) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class _BlockingBearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """The blocking API takes one interceptor for every call type."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> grpc.ClientCallDetails:
        return _BlockingCallDetails(details, [*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)


class _UploadMessage(Protocol):
    """A client-streamed upload message: a `header` first, then `chunk`s (a oneof `payload`)."""

    @property
    def header(self) -> Any: ...
    @property
    def chunk(self) -> bytes: ...

    def HasField(self, field_name: Any) -> bool: ...


async def split_upload(requests: AsyncIterator[_UploadMessage], rpc: str) -> tuple[Any, AsyncIterator[bytes]]:
    """The header of an upload stream, and the stream of its remaining chunks; a missing or
    repeated header is an InvalidArgument naming the RPC."""
    requests = _decoded(requests, rpc)
    first = await anext(requests, None)
    if first is None or not first.HasField("header"):
        raise InvalidArgument(f"the first {rpc} message must carry the header")

    async def chunks() -> AsyncIterator[bytes]:
        async for message in requests:
            if message.HasField("header"):
                raise InvalidArgument(f"only the first {rpc} message may carry a header")
            yield message.chunk

    return first.header, chunks()


async def _decoded(requests: AsyncIterator[_UploadMessage], rpc: str) -> AsyncIterator[_UploadMessage]:
    """grpc.aio decodes each message of a stream as the handler reads it: bytes that are not one
    are the caller's fault (INVALID_ARGUMENT), not the server's (INTERNAL)."""
    try:
        async for message in requests:
            yield message
    except DecodeError as exc:
        raise InvalidArgument(f"a {rpc} message is not a valid protobuf message") from exc


def file_chunks(path: Path, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) pieces of a file from `offset` on."""
    with path.open("rb") as source:
        source.seek(offset)
        while data := source.read(chunk_size):
            yield offset, data
            offset += len(data)


class ReceivedFile:
    """A streamed upload spooled to a temporary file beside its final home, with its sha256."""

    def __init__(self, path: Path, size: int, sha256: str) -> None:
        self.path = path
        self.size = size
        self.sha256 = sha256

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


async def receive_to_file(chunks: AsyncIterator[bytes], spool_dir: Path, max_bytes: int) -> ReceivedFile:
    """Write streamed chunks to a temporary file, hashing as they come; refuse empty or oversized."""
    spool_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a cheap local call, once per upload
    digest = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix=".upload-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidArgument(f"upload exceeds the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise InvalidArgument("upload is empty")
    except BaseException:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - cleanup on the error path
        raise
    return ReceivedFile(path, size, digest.hexdigest())
