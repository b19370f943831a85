"""Where every client's RPC is made: a failed call becomes a Cascade error (cascade.errors) that
says which service failed doing what; nothing above this module sees a gRPC status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cascade.errors import error_from_rpc

__all__ = ["RemoteService", "call", "stream"]

T = TypeVar("T")


class RemoteService:
    """One service as its client sees it: a name for messages ("registry at 127.0.0.1:50054")
    and the channel its stub calls over."""

    def __init__(self, name: str, channel: grpc.aio.Channel, address: str = "") -> None:
        self.name = name
        self.channel = channel
        self.address = address

    def describe(self, what: str) -> str:
        where = f"{self.name} at {self.address}" if self.address else self.name
        return f"{where}: {what}"


async def call(service: RemoteService, what: str, rpc: Callable[[], Awaitable[T]]) -> T:
    """Await one unary (or client-streaming) call; a failure is the Cascade error of its status."""
    try:
        return await rpc()
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error, service.describe(what)) from None


async def stream(service: RemoteService, what: str, responses: AsyncIterator[T] | Any) -> AsyncIterator[T]:
    """The messages of one server-streaming call; a failure mid-stream is the Cascade error of its
    status, raised after the messages that did arrive."""
    try:
        async for message in responses:
            yield message
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error, service.describe(what)) from None
