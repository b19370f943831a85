"""A real grpc.aio server on loopback for tests, with the same interceptors and options as services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc

from cascade.service import GRPC_OPTIONS


@asynccontextmanager
async def serving(
    register: Callable[[grpc.aio.Server], None],
    interceptors: Sequence[Any] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=interceptors, options=GRPC_OPTIONS)
    register(server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
