"""What security costs serving: the same gRPC ModelInfer load against Cascade in plaintext, over TLS,
and over TLS with every call authenticated (a bearer token checked against the principals file),
all three running at once and measured in interleaved rounds, so that load from anything else on
the machine falls on all three alike. The figure is the median of the rounds and its ratio to
plaintext, in the same run.

    flock /tmp/cascade-heavy.lock .venv/bin/python bench/serving/security.py

Same model, workers, load generator and fake registry as bench/serving/run.py (which see); the
secured servers verify the registry over TLS too, and the client verifies serving against a local CA
(cascade.stack.certs) and, with authentication, sends the admin's token on every call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from contextlib import ExitStack

import grpc
from run import (  # bench/serving/run.py, beside this script
    PORT,
    REGISTRY_PORT,
    SECURITY,
    TLS_REGISTRY_PORT,
    Registry,
    infer_request,
    measure,
    running,
    security_material,
    start_cascade,
    train_models,
    wait_model_ready,
)

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.stack.certs import init_pki
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc

CONFIGURATIONS = ("plaintext", "TLS", "TLS + auth")


async def _registries(registry: Registry) -> list[grpc.aio.Server]:
    """The fake registry in plaintext and over TLS (with serving's own certificate)."""
    plain = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, plain)
    plain.add_insecure_port(f"127.0.0.1:{REGISTRY_PORT}")
    secured = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, secured)
    identity = init_pki(SECURITY, ["serving"]).identity("serving")
    credentials = grpc.ssl_server_credentials(
        [(identity.key_file.read_bytes(), identity.cert_file.read_bytes())]
    )
    secured.add_secure_port(f"127.0.0.1:{TLS_REGISTRY_PORT}", credentials)
    for server in (plain, secured):
        await server.start()
    return [plain, secured]


async def main(args: argparse.Namespace) -> None:
    models = train_models()
    requests = {rows: infer_request(models.rows[:rows]) for rows in (1, 64)}
    registries = await _registries(Registry(models.onnx))
    admin = security_material()
    clients: dict[str, ClientSecurity] = {
        "plaintext": PLAINTEXT,
        "TLS": ClientSecurity(ca_file=admin.ca_file),
        "TLS + auth": admin,
    }
    # Clear of run.py's fixed ports (its server's, the registries'): each server's REST port follows it.
    ports = {name: PORT + 50 + 10 * index for index, name in enumerate(CONFIGURATIONS)}
    rates: dict[tuple[str, int, int], list[float]] = {}
    print(
        f"Serving security benchmark: {args.rounds} interleaved rounds of {args.seconds:g} s per point, "
        f"{args.workers} workers each, {os.cpu_count()} cores",
        flush=True,
    )
    try:
        await _measure_interleaved(args, requests, clients, ports, rates)
    finally:
        for server in registries:
            await server.stop(None)
    _report(args, requests, rates)


async def _measure_interleaved(
    args: argparse.Namespace,
    requests: dict[int, bytes],
    clients: dict[str, ClientSecurity],
    ports: dict[str, int],
    rates: dict[tuple[str, int, int], list[float]],
) -> None:
    with ExitStack() as servers:
        for name in CONFIGURATIONS:
            tls, auth = name != "plaintext", name == "TLS + auth"
            servers.enter_context(
                running(start_cascade(args.workers, args.sample_rate, tls=tls, auth=auth, port=ports[name]))
            )
        for name in CONFIGURATIONS:
            await wait_model_ready(ports[name], security=clients[name])
        for _ in range(args.rounds):
            for rows, request in requests.items():
                for concurrency in args.concurrency:
                    for name in CONFIGURATIONS:
                        run = await measure(
                            f"cascade {name}",
                            request,
                            rows,
                            concurrency,
                            args.seconds,
                            security=clients[name],
                            port=ports[name],
                        )
                        assert run.failures == 0, f"{name}: {run.failures} failed requests"
                        rates.setdefault((name, rows, concurrency), []).append(run.rate)


def _report(
    args: argparse.Namespace, requests: dict[int, bytes], rates: dict[tuple[str, int, int], list[float]]
) -> None:
    print("\n| configuration | rows | concurrency | req/s (median of rounds) | ÷ plaintext |")
    print("|---|---|---|---|---|")
    for rows in requests:
        for concurrency in args.concurrency:
            baseline = statistics.median(rates["plaintext", rows, concurrency])
            for name in CONFIGURATIONS:
                rate = statistics.median(rates[name, rows, concurrency])
                print(f"| {name} | {rows} | {concurrency} | {rate:.0f} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the three")
    parser.add_argument("--workers", type=int, default=2, help="Cascade serving worker processes")
    parser.add_argument("--sample-rate", type=float, default=0.01, help="Cascade's prediction-log rate")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    asyncio.run(main(parser.parse_args()))
