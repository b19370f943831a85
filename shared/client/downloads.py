"""The one verified, resumable download that both a model artifact and a dataset version use.

Both arrive as a server stream of chunks that carry their offset, the whole file's size and its
sha256 (ArtifactChunk, DataChunk), and both requests take an `offset`. When the stream breaks with
Unavailable after bytes arrived, the download asks again from where it stopped, within a small
budget of resumes; the assembled file is then checked against the size and sha256 the server sent.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cascade.client.calls import RemoteService, stream
from cascade.errors import FailedPrecondition, Unavailable

__all__ = ["MAX_RESUMES", "Chunk", "verified_download", "verified_download_to_file"]

# Resumes after a broken stream, per download: enough for a server restart or a dropped
# connection, few enough that a service that keeps failing is reported soon.
MAX_RESUMES = 3


class Chunk(Protocol):
    """What DataChunk and ArtifactChunk have in common."""

    @property
    def data(self) -> bytes: ...
    @property
    def offset(self) -> int: ...
    @property
    def total_size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


async def verified_download(
    service: RemoteService,
    what: str,
    request_from: Callable[[int], Any],
    *,
    max_resumes: int = MAX_RESUMES,
) -> bytes:
    """The whole file that `request_from(offset)` streams (a grpc.aio server-streaming call),
    resumed from the bytes received so far when the stream breaks with Unavailable after making
    progress, at most `max_resumes` times. FailedPrecondition when the chunks arrive out of order,
    the file changes between resumes or the result does not match its size and sha256."""
    received = bytearray()
    total_size, sha256 = -1, ""
    resumes_left = max_resumes
    chunk: Chunk
    while True:
        start = len(received)
        call = request_from(start)
        try:
            async for chunk in stream(service, what, call):
                if chunk.offset != len(received):
                    raise FailedPrecondition(
                        f"{service.describe(what)}: a chunk arrived at offset {chunk.offset}, "
                        f"expected {len(received)}"
                    )
                if sha256 and chunk.sha256 != sha256:
                    raise FailedPrecondition(f"{service.describe(what)}: the file changed while resuming")
                total_size, sha256 = chunk.total_size, chunk.sha256
                received += chunk.data
            break
        except Unavailable:
            if len(received) == start or resumes_left == 0:
                raise  # nothing new arrived, or the budget is spent: the caller retries later
            resumes_left -= 1
        finally:
            call.cancel()  # a no-op after the last chunk; frees the stream when it stopped early
    data = bytes(received)
    await _verify(data, total_size, sha256, service.describe(what))
    return data


async def verified_download_to_file(
    service: RemoteService,
    what: str,
    request_from: Callable[[int], Any],
    path: Path,
    *,
    max_resumes: int = MAX_RESUMES,
) -> int:
    """As verified_download, but each chunk goes to `path` as it arrives, so a file larger than
    memory can be received; its size. The sha256 is computed on the way; a file that does not
    match is deleted before FailedPrecondition."""
    digest, written, total_size, sha256 = hashlib.sha256(), 0, -1, ""
    resumes_left = max_resumes
    chunk: Chunk
    with path.open("wb") as spool:
        while True:
            start = written
            call = request_from(start)
            try:
                async for chunk in stream(service, what, call):
                    if chunk.offset != written:
                        raise FailedPrecondition(
                            f"{service.describe(what)}: a chunk arrived at offset {chunk.offset}, "
                            f"expected {written}"
                        )
                    if sha256 and chunk.sha256 != sha256:
                        raise FailedPrecondition(f"{service.describe(what)}: the file changed while resuming")
                    total_size, sha256 = chunk.total_size, chunk.sha256
                    await asyncio.to_thread(spool.write, chunk.data)
                    digest.update(chunk.data)
                    written += len(chunk.data)
                break
            except Unavailable:
                if written == start or resumes_left == 0:
                    raise
                resumes_left -= 1
            finally:
                call.cancel()
    problem = _problem(written, digest.hexdigest(), total_size, sha256)
    if problem:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise FailedPrecondition(f"{service.describe(what)}: {problem}")
    return written


def _problem(size: int, digest: str, total_size: int, sha256: str) -> str:
    if total_size < 0:
        return "the stream ended before any chunk arrived"
    if size != total_size:
        return f"arrived {size} bytes of {total_size}"
    return "arrived corrupt (sha256 mismatch)" if digest != sha256 else ""


async def _verify(data: bytes, total_size: int, sha256: str, what: str) -> None:
    if total_size < 0:
        raise FailedPrecondition(f"{what}: the stream ended before any chunk arrived")
    if len(data) != total_size:
        raise FailedPrecondition(f"{what}: arrived {len(data)} bytes of {total_size}")
    # Hashing megabytes takes a while: off the event loop, so health checks go on meanwhile.
    if await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest()) != sha256:
        raise FailedPrecondition(f"{what}: arrived corrupt (sha256 mismatch)")
