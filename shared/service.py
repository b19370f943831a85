"""Runs one Cascade service: a gRPC server (health, reflection, the service's API) and a Kafka broker
in one event loop, ready only when really ready, and stopped gracefully on SIGTERM or SIGINT.

Start order: gRPC server, `on_start` hooks (e.g. loading the champion), Kafka consumers, then
health SERVING. Stop order is the reverse: NOT_SERVING first so load balancers drain, then the
consumers finish their in-flight message, then the gRPC server lets calls finish within the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from faststream.kafka import KafkaBroker
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from prometheus_client import start_http_server

from shared.metrics import GrpcMetricsInterceptor
from shared.settings import ServiceSettings
from shared.telemetry import grpc_server_interceptors

__all__ = ["GRPC_OPTIONS", "Service", "event_loop_factory", "run_main"]

log = logging.getLogger(__name__)

# Large enough for a 64-row float64 inference batch or an artifact chunk, with headroom.
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # A second copy of a service must fail to bind rather than silently share the port.
    ("grpc.so_reuseport", 0),
]

Hook = Callable[[], Awaitable[None]]
Registrar = Callable[[grpc.aio.Server], None]


@dataclass
class Service:
    """What a service plugs into the runtime. Transports stay thin; the domain lives elsewhere."""

    name: str
    settings: ServiceSettings
    broker: KafkaBroker | None = None
    # Callables that add servicers to the server, and the full names of the services they add.
    grpc_registrars: Sequence[Registrar] = ()
    grpc_service_names: Sequence[str] = ()
    on_start: Sequence[Hook] = ()
    on_stop: Sequence[Hook] = ()
    health: HealthServicer = field(default_factory=HealthServicer)
    # Several processes of one service may listen on one port (SO_REUSEPORT); off by default, so
    # that a second copy started by mistake fails to bind instead of silently sharing the port.
    share_port: bool = False
    bound_port: int = 0

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", *self.grpc_service_names):
            await self.health.set(name, status)

    async def _start_broker(self, stop: asyncio.Event) -> bool:
        """Connect, retrying while Kafka is not up (staying NOT_SERVING); False if told to stop first."""
        assert self.broker is not None
        delay = 0.5
        while not stop.is_set():
            try:
                await self.broker.start()
                return True
            except Exception as exc:
                log.warning(
                    "Kafka at %s not reachable yet (%s); retrying", self.settings.kafka_bootstrap, exc
                )
                with contextlib.suppress(Exception):
                    await self.broker.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)
        return False

    async def _watch_broker(self) -> None:
        """Health follows the broker: NOT_SERVING while Kafka is unreachable."""
        assert self.broker is not None
        serving = True
        while True:
            await asyncio.sleep(5.0)
            ok = await self.broker.ping(timeout=3.0)
            if ok != serving:
                serving = ok
                log.warning("Kafka %s", "reachable again" if ok else "unreachable: health NOT_SERVING")
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)

        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port, addr=self.settings.grpc_host)

        options = [o for o in GRPC_OPTIONS if o[0] != "grpc.so_reuseport"]
        options.append(("grpc.so_reuseport", int(self.share_port)))
        interceptors = [
            *grpc_server_interceptors(self.settings.grpc_root_span_sample_rate),
            GrpcMetricsInterceptor(),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for register in self.grpc_registrars:
            register(server)
        reflection.enable_server_reflection(
            (
                *self.grpc_service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.bound_port = server.add_insecure_port(f"{self.settings.grpc_host}:{self.settings.grpc_port}")
        await server.start()
        log.info("%s gRPC listening on %s:%d", self.name, self.settings.grpc_host, self.bound_port)

        watcher: asyncio.Task[None] | None = None
        try:
            for hook in self.on_start:
                await hook()
            if self.broker is None or await self._start_broker(stop):
                if self.broker is not None:
                    watcher = asyncio.create_task(self._watch_broker())
                await self._set_health(health_pb2.HealthCheckResponse.SERVING)
                log.info("%s ready", self.name)
            await stop.wait()
            log.info("%s stopping", self.name)
        finally:
            await self.health.enter_graceful_shutdown()
            if watcher is not None:
                watcher.cancel()
            if self.broker is not None:
                await self.broker.stop()
            await server.stop(self.settings.shutdown_grace_seconds)
            for hook in self.on_stop:
                await hook()
            provider = trace.get_tracer_provider()
            shutdown = getattr(provider, "shutdown", None)
            if callable(shutdown):
                shutdown()
            log.info("%s stopped", self.name)


def run_main(name: str, build: Callable[[], Service], version: str = "") -> None:
    """Entry point of `python -m services.<name>`: logging and tracing first, then the service."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    from shared.logs import setup_logging
    from shared.telemetry import setup_tracing

    try:
        version = version or package_version("cascade-mlops")
    except PackageNotFoundError:
        version = "0.0.0"
    setup_tracing(f"cascade-{name}", version)

    async def main() -> None:
        # Built inside the running loop: gRPC channels and the broker bind to the loop they start in.
        service = build()
        setup_logging(name, service.settings.log_level, service.settings.log_format)
        log.info("%s runs on %s", name, type(asyncio.get_running_loop()).__module__)
        await service.run()

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())


def event_loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop a service runs on: uvloop where it is installed, else asyncio's own.

    `CASCADE_EVENT_LOOP` (`uvloop`, the default, or `asyncio`) chooses, for every service alike: it
    is a property of the process, read before any settings exist. uvloop makes a small gRPC call
    cheaper to handle (bench/RESULTS.md, Serving); asyncio's loop is the way back should a library
    misbehave on it.
    """
    choice = (choice or os.environ.get("CASCADE_EVENT_LOOP") or "uvloop").strip().lower()
    if choice == "asyncio":
        return None
    if choice != "uvloop":
        raise ValueError(f"CASCADE_EVENT_LOOP={choice!r}: choose 'uvloop' or 'asyncio'")
    try:
        import uvloop
    except ImportError:  # not installed (Windows has none): asyncio's loop
        return None
    return uvloop.new_event_loop
