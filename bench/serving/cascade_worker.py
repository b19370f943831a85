"""One Cascade serving worker for the benchmark: the real service (`build()` + `Service.run`) on a
fixed gRPC port and a fixed REST port, both shared with the other workers (SO_REUSEPORT), fed by the
benchmark's fake registry over the real registry protocol. Kafka is faststream's in-memory
TestKafkaBroker (no broker process to share the cores), so promotions arrive on stdin, one per line,
and are published to it:

    stdin   promote <model> <version>
    stdout  READY                       once the gRPC server listens (the champion loads next)
    stdout  PROMOTED <model> <version>  once this worker has handled it
    stdin   stats
    stdout  STATS <scored> <dropped>    shadow scorings this worker reported (LiveTrafficReported,
                                        published every 2 s) and dropped (its queue full)

Tracing is set up as `run_main` sets it up for a real service (the exporters OTEL_TRACES_EXPORTER
names; the benchmark writes OTLP-JSON to a file), so sampled spans cost what they cost in production.

--batching on|off sets adaptive batching (CASCADE_SERVING_BATCHING_ENABLED), --batching-max-delay-us
its delay; without them the service's defaults hold.

--without-shared-interceptors is a diagnosis only: the gRPC server is built without the tracing and
metrics interceptors every Cascade service carries (shared/service.py), to show what they cost the
request path. Cascade itself always runs with them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
import prometheus_client
from faststream.kafka import KafkaBroker, TestKafkaBroker

from cascade.events import LiveTrafficReported, ModelPromoted, Topics
from cascade.logs import setup_logging
from cascade.service import event_loop_factory
from cascade.services.serving.app import build
from cascade.services.serving.settings import ServingSettings
from cascade.services.serving.workers import worker_settings
from cascade.telemetry import setup_tracing


def say(*words: object) -> None:
    print(*words, flush=True)


SHADOW_SCORED = [0]  # shadow scorings in this worker's LiveTrafficReported events


def count_shadow_scorings(broker: KafkaBroker, topics: Topics) -> None:
    @broker.subscriber(topics.for_event(LiveTrafficReported), group_id="bench-live-traffic")
    async def on_live_traffic(event: LiveTrafficReported) -> None:
        SHADOW_SCORED[0] += sum(stats.requests for stats in event.versions if stats.role == "shadow")


async def obey(broker: KafkaBroker, topics: Topics) -> None:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode():
        if line.startswith("stats"):
            say("STATS", SHADOW_SCORED[0], int(_counted("cascade_serving_shadow_dropped_total")))
            continue
        _, model, version = line.split()
        event = ModelPromoted(
            source="bench", subject=model, model=model, model_version=int(version), actor="bench"
        )
        await broker.publish(event, topic=topics.for_event(ModelPromoted), key=model.encode())
        say("PROMOTED", model, version)


def _counted(name: str) -> float:
    """The sum of a counter's samples in this process (what /metrics would show)."""
    return sum(
        sample.value
        for metric in prometheus_client.REGISTRY.collect()
        for sample in metric.samples
        if sample.name == name
    )


def security_settings(arguments: argparse.Namespace) -> dict[str, Any]:
    """TLS with serving's certificate from --security-dir (and, with --auth, required tokens)."""
    if not arguments.security_dir:
        return {}
    directory = Path(arguments.security_dir)
    settings: dict[str, Any] = {
        "tls_cert_file": directory / "serving.pem",
        "tls_key_file": directory / "serving.key",
        "tls_ca_file": directory / "ca.pem",
    }
    if arguments.auth:
        settings |= {
            "auth_required": True,
            "auth_principals_file": directory / "principals.toml",
            "token_file": directory / "serving.token",
        }
    return settings


def batching_settings(arguments: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if arguments.batching is not None:
        settings["batching_enabled"] = arguments.batching == "on"
    if arguments.batching_max_delay_us is not None:
        settings["batching_max_delay_microseconds"] = arguments.batching_max_delay_us
    return settings


async def main(arguments: argparse.Namespace) -> None:
    settings = worker_settings(
        ServingSettings(
            **security_settings(arguments),
            **batching_settings(arguments),
            grpc_port=arguments.port,
            http_port=arguments.http_port,
            registry_address=arguments.registry,
            instance_id="bench",
            topic_prefix="bench",
            workers=arguments.workers,
            prediction_log_sample_rate=arguments.sample_rate,
            shutdown_grace_seconds=1.0,
            log_level="WARNING",
        ),
        arguments.index,
    )
    service = build(settings)
    assert service.broker is not None
    count_shadow_scorings(service.broker, Topics(settings.topic_prefix))

    async def announce() -> None:
        say("READY")

    service.on_start = [*service.on_start, announce]
    stop = asyncio.Event()
    async with TestKafkaBroker(service.broker) as broker:
        running = asyncio.create_task(service.run(stop))
        obeying = asyncio.create_task(obey(broker, Topics(settings.topic_prefix)))
        await asyncio.wait({running, obeying}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        obeying.cancel()
        await running


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True, help="the KServe V2 REST port")
    parser.add_argument("--registry", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--sample-rate", type=float, default=0.01)
    parser.add_argument("--without-shared-interceptors", action="store_true")
    parser.add_argument("--security-dir", help="serve TLS with the certificate and CA made there")
    parser.add_argument("--auth", action="store_true", help="require a token (from --security-dir)")
    parser.add_argument(
        "--batching", choices=["on", "off"], help="adaptive batching (default: the service's)"
    )
    parser.add_argument("--batching-max-delay-us", type=int, help="adaptive batching's max delay")
    arguments = parser.parse_args()
    if arguments.without_shared_interceptors:
        build_server = grpc.aio.server

        def without_interceptors(*args: Any, interceptors: Any = None, **kwargs: Any) -> Any:
            return build_server(*args, **kwargs)

        grpc.aio.server = without_interceptors
    setup_logging("serving", "WARNING", "text")
    setup_tracing("cascade-serving", "bench")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # as run_main runs a service
        runner.run(main(arguments))
