"""The floor Python gRPC sets: a bare grpc.aio server answering ModelInfer with a fixed payload.

No protobuf parsing, no interceptors: the request bytes are taken as they come and a prepared,
serialized ModelInferResponse (the size Cascade answers with) goes back. With --interceptors it
carries the server interceptors every Cascade service has (tracing at serving's default root-span
rate, and gRPC metrics; shared/service.py), which shows what they cost apart from serving's own work.
The floor is measured on asyncio's own loop, as the issue defines it; --uvloop runs it on the loop
Cascade's services run on (shared/service.py), to show what the loop alone is worth.

    python echo_server.py --port PORT --response FILE [--interceptors] [--uvloop]
    (prints READY when listening)
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def main(port: int, response: bytes, with_interceptors: bool) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return response

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)}
    )
    interceptors: list[Any] = []
    if with_interceptors:
        from cascade.metrics import GrpcMetricsInterceptor
        from cascade.services.serving.settings import ServingSettings
        from cascade.telemetry import grpc_server_interceptors

        root_rate = ServingSettings.model_fields["grpc_root_span_sample_rate"].default
        interceptors = [*grpc_server_interceptors(root_rate), GrpcMetricsInterceptor()]
    server = grpc.aio.server(interceptors=interceptors or None, options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response", type=Path, required=True)
    parser.add_argument("--interceptors", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    arguments = parser.parse_args()
    loop_factory = None
    if arguments.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main(arguments.port, arguments.response.read_bytes(), arguments.interceptors))
