"""`python -m shared.healthcheck HOST:PORT`: exit 0 only if the gRPC server there is SERVING.

The container health check of every service (the Dockerfile's HEALTHCHECK): one
`grpc.health.v1.Health/Check` call, for the whole server (service "") unless `--service` names one.
Anything else (NOT_SERVING, an unknown service, nothing listening, no answer in time) prints one
line saying why to stderr and exits 1. Kubernetes needs none of this: its probes speak gRPC.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check", "main"]

# Straight to the address: a proxy named in the environment must not answer for the service.
_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


def check(address: str, service: str = "", timeout: float = 3.0) -> str | None:
    """None if `address` reports `service` SERVING; otherwise the reason, in one line."""
    with grpc.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            # Errors of sync calls are also a grpc.Call, which carries the status.
            if isinstance(error, grpc.Call):
                return f"{address}: {error.code().name}: {error.details()}"
            return f"{address}: {error}"
    if response.status == health_pb2.HealthCheckResponse.SERVING:
        return None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return f"{address}: {status}"


def _address(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.healthcheck",
        description="Exit 0 if the gRPC server at ADDRESS reports SERVING (grpc.health.v1), else 1.",
    )
    parser.add_argument("address", type=_address, help="HOST:PORT of the gRPC server")
    parser.add_argument("--service", default="", help='service name to ask about (default "": the server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    reason = check(args.address, args.service, args.timeout)
    if reason is not None:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
