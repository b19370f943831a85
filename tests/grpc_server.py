"""A real grpc.aio server on loopback for tests, with the same interceptors and options as services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc

from shared.service import GRPC_OPTIONS


@asynccontextmanager
async def serving(register: Callable[[grpc.aio.Server], None]) -> AsyncIterator[str]:
    server = grpc.aio.server(options=GRPC_OPTIONS)
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
