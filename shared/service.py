"""Runs one Cascade service: a gRPC server (health, reflection, the service's API) and a Kafka broker
in one event loop, ready only when really ready, and stopped gracefully on SIGTERM or SIGINT.

Start order: gRPC server, `on_start` hooks (e.g. loading the champion), Kafka consumers, then
health SERVING. Stop order is the reverse: NOT_SERVING first so load balancers drain, then the
consumers finish their in-flight message, then the gRPC server lets calls finish within the grace.

Health tells the truth about delivery too, checked every `watch_interval_seconds`:

- NOT_SERVING while Kafka is unreachable;
- *degraded* while a consumer keeps failing on a message (retrying it within its budget, see
  cascade.messaging) or its lag grew at each of the last `LAG_GROWTH_CHECKS` checks: still SERVING,
  with the reason logged and `cascade_service_degraded` at 1;
- NOT_SERVING once one message has kept failing longer than `degraded_not_serving_seconds`, until it
  is handled or dead-lettered.

Metrics per topic: `cascade_consumer_lag` (highwater - position of each assigned partition),
`cascade_message_retries_total` and `cascade_dead_letters_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, TypeAlias

import grpc
from faststream.kafka import KafkaBroker
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from prometheus_client import Gauge, start_http_server

from cascade.client.channels import GRPC_OPTIONS
from cascade.interceptors import RequestDecodingInterceptor
from cascade.messaging import dead_letters_of
from cascade.metrics import GrpcMetricsInterceptor
from cascade.security import Authenticator, AuthInterceptor, server_credentials
from cascade.settings import ServiceSettings
from cascade.telemetry import grpc_server_interceptors

__all__ = ["GRPC_OPTIONS", "Service", "event_loop_factory", "run_main"]

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]
Registrar = Callable[[grpc.aio.Server], None]
ServingStatus: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus.ValueType

# Lag that grew at this many checks in a row (30 s at the default interval) means the consumer
# does not keep up.
LAG_GROWTH_CHECKS = 6

CONSUMER_LAG = Gauge(
    "cascade_consumer_lag",
    "Messages not yet consumed: highwater minus position, per assigned partition.",
    ["service", "topic", "partition"],
)
FAILING_MESSAGES = Gauge(
    "cascade_consumer_failing_messages", "Messages failing and waiting for a retry.", ["service"]
)
FAILING_SECONDS = Gauge(
    "cascade_consumer_failing_seconds", "How long the oldest failing message has kept failing.", ["service"]
)
DEGRADED = Gauge(
    "cascade_service_degraded",
    "1 while a consumer keeps failing on a message or falls behind (the log says why), else 0.",
    ["service"],
)


@dataclass
class Service:
    """What a service plugs into the runtime. Transports stay thin; the domain lives elsewhere."""

    name: str
    settings: ServiceSettings
    broker: KafkaBroker | None = None
    # Callables that add servicers to the server, and the full names of the services they add.
    grpc_registrars: Sequence[Registrar] = ()
    grpc_service_names: Sequence[str] = ()
    # The role each RPC needs, by full method path (cascade.security); a method left out is admin-only.
    grpc_roles: Mapping[str, str] = field(default_factory=dict)
    on_start: Sequence[Hook] = ()
    on_stop: Sequence[Hook] = ()
    health: HealthServicer = field(default_factory=HealthServicer)
    # Several processes of one service may listen on one port (SO_REUSEPORT); off by default, so
    # that a second copy started by mistake fails to bind instead of silently sharing the port.
    share_port: bool = False
    bound_port: int = 0
    watch_interval_seconds: float = 5.0
    # Why the service is degraded now ("" when it is not): see the module's docstring.
    degraded_reason: str = field(default="", init=False)
    _lag_totals: deque[int] = field(default_factory=lambda: deque(maxlen=LAG_GROWTH_CHECKS + 1), init=False)
    _lag_labels: set[tuple[str, str]] = field(default_factory=set, init=False)

    async def _set_health(self, status: ServingStatus) -> None:
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
        """Health follows the broker and the delivery of messages (see the module's docstring)."""
        assert self.broker is not None
        serving = True
        while True:
            await asyncio.sleep(self.watch_interval_seconds)
            reachable = await self.broker.ping(timeout=3.0)
            stuck_too_long = False
            try:
                stuck_too_long = await self._check_delivery()
            except Exception as exc:  # a metric that cannot be read must not stop the watch
                log.warning("could not check the consumers' delivery: %r", exc)
            ok = reachable and not stuck_too_long
            if ok != serving:
                serving = ok
                if not reachable:
                    log.warning("Kafka unreachable: health NOT_SERVING")
                elif stuck_too_long:
                    log.error("%s for too long: health NOT_SERVING", self.degraded_reason)
                else:
                    log.warning("Kafka reachable and messages flowing again: health SERVING")
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )

    async def _check_delivery(self) -> bool:
        """Update the delivery metrics and `degraded_reason`; True if a message has kept failing
        longer than `degraded_not_serving_seconds`."""
        assert self.broker is not None
        reasons: list[str] = []
        stuck_too_long = False
        dead_letters = dead_letters_of(self.broker)
        failing = dead_letters.failing() if dead_letters is not None else []
        FAILING_MESSAGES.labels(self.name).set(len(failing))
        FAILING_SECONDS.labels(self.name).set(failing[0].seconds if failing else 0.0)
        if failing:
            oldest = failing[0]
            reasons.append(
                f"{len(failing)} message(s) failing, the oldest {oldest.topic}[{oldest.partition}]@"
                f"{oldest.offset} for {oldest.seconds:.0f} s after {oldest.attempts} attempt(s): "
                f"{oldest.last_error[:200]}"
            )
            stuck_too_long = oldest.seconds > self.settings.degraded_not_serving_seconds
        total_lag = await self._update_lag()
        self._lag_totals.append(total_lag)
        totals = list(self._lag_totals)
        if len(totals) == self._lag_totals.maxlen and all(a < b for a, b in pairwise(totals)):
            reasons.append(
                f"consumer lag grew at each of the last {LAG_GROWTH_CHECKS} checks, to {total_lag}"
            )
        reason = "; ".join(reasons)
        if reason != self.degraded_reason:
            if reason:
                log.warning("degraded: %s", reason)
            elif self.degraded_reason:
                log.info("no longer degraded")
            self.degraded_reason = reason
        DEGRADED.labels(self.name).set(1 if reason else 0)
        return stuck_too_long

    async def _update_lag(self) -> int:
        """Set `cascade_consumer_lag` for every partition assigned to this service's consumer groups;
        the total."""
        assert self.broker is not None
        total = 0
        measured: set[tuple[str, str]] = set()
        for subscriber in self.broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            if consumer is None or not getattr(subscriber, "group_id", None):
                continue
            for partition in consumer.assignment():
                highwater = consumer.highwater(partition)
                if highwater is None:  # nothing fetched yet
                    continue
                position = await asyncio.wait_for(consumer.position(partition), 3.0)
                lag = max(highwater - position, 0)
                labels = (partition.topic, str(partition.partition))
                CONSUMER_LAG.labels(self.name, *labels).set(lag)
                measured.add(labels)
                total += lag
        # A partition that moved to another consumer is that consumer's to report.
        for labels in self._lag_labels - measured:
            CONSUMER_LAG.remove(self.name, *labels)
        self._lag_labels = measured
        return total

    async def _start_grpc_server(self) -> grpc.aio.Server:
        """The gRPC server, NOT_SERVING until the service is ready: TLS and authentication as the
        settings say (cascade.security)."""
        options = [o for o in GRPC_OPTIONS if o[0] != "grpc.so_reuseport"]
        options.append(("grpc.so_reuseport", int(self.share_port)))
        interceptors: list[Any] = [
            *grpc_server_interceptors(self.settings.grpc_root_span_sample_rate),
            GrpcMetricsInterceptor(),
        ]
        authenticator = Authenticator.of(self.settings)
        # Without a principals file every caller is the trusted anonymous one: nothing to check.
        if authenticator.required or authenticator.principals.entries:
            interceptors.append(AuthInterceptor(authenticator, self.grpc_roles))
        interceptors.append(RequestDecodingInterceptor())  # innermost: the handler grpc runs decodes with it
        credentials = server_credentials(self.settings)
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
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        if credentials is None:
            self.bound_port = server.add_insecure_port(address)
            transport = "plaintext"
        else:
            self.bound_port = server.add_secure_port(address, credentials)
            transport = "mTLS" if self.settings.tls_require_client_cert else "TLS"
        await server.start()
        log.info(
            "%s gRPC listening on %s:%d (%s, authentication %s)",
            self.name,
            self.settings.grpc_host,
            self.bound_port,
            transport,
            "required" if authenticator.required else "optional",
        )
        return server

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)

        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port, addr=self.settings.grpc_host)

        server = await self._start_grpc_server()

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

    from cascade.logs import setup_logging
    from cascade.telemetry import setup_tracing

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
