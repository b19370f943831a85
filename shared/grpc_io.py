"""gRPC client plumbing and chunked byte streams, shared by every service and the CLI."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from cascade.client.channels import open_blocking_channel, open_channel
from cascade.errors import InvalidArgument

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
