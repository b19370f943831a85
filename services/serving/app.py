"""Wires serving together: registry client, model repository, prediction log, Kafka, gRPC and REST."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import grpc
from faststream.kafka import KafkaBroker
from grpc_health.v1 import health_pb2

from cascade.client.channels import ClientSecurity
from cascade.events import Event, ModelLoadFailed, PredictionLogged, Topics
from cascade.messaging import build_broker, publish_event
from cascade.security import ADMIN, OPEN, Authenticator, method_roles
from cascade.service import Service
from cascade.services.serving import explain, kafka_api
from cascade.services.serving.batching import BatchingPolicy
from cascade.services.serving.comparisons import Comparisons
from cascade.services.serving.inference import SERVICE_NAME, InferenceServicer
from cascade.services.serving.live_stats import LiveStats, LiveStatsReporter
from cascade.services.serving.prediction_log import PredictionLog
from cascade.services.serving.readiness import GatedHealth, StartupLoad
from cascade.services.serving.registry_client import RegistryModelSource
from cascade.services.serving.repository import LoadedModel, LoadFailure, ModelRepository
from cascade.services.serving.rest import Admission, RestEndpoint, ServerTls, rest_app
from cascade.services.serving.settings import ServingSettings
from cascade.stubs.inference import grpc_service_pb2 as pb
from cascade.stubs.inference import grpc_service_pb2_grpc

__all__ = ["build", "build_explainer", "build_serving", "replica_id"]


_OPEN_FOR_INFERENCE = ("ModelInfer", "ModelMetadata", "ModelConfig", "ServerMetadata")


def serving_roles(open_inference: bool) -> dict[str, str]:
    """The role each RPC needs: health (ServerLive/Ready, ModelReady) is open; the rest needs
    serving:infer unless inference is open to everyone; Explain needs it always (explainer_roles)."""
    roles = dict.fromkeys(
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name, "serving:infer"
    )
    roles.update(dict.fromkeys(("ServerLive", "ServerReady", "ModelReady"), OPEN))
    if open_inference:
        roles.update(dict.fromkeys(_OPEN_FOR_INFERENCE, OPEN))
    return method_roles(SERVICE_NAME, roles) | explainer_roles()


def explainer_roles() -> dict[str, str]:
    """Explain needs serving:infer even when inference is open to everyone: one explanation costs
    thousands of model evaluations."""
    return method_roles(explain.EXPLAIN_SERVICE_NAME, {"Explain": "serving:infer"})


def rest_admission(authenticator: Authenticator, roles: Mapping[str, str]) -> Admission | None:
    """REST's check of a call, as AuthInterceptor's on gRPC: the role of the endpoint's gRPC twin
    (health open) from a bearer token; None when the service knows no principals and requires none."""
    if not (authenticator.required or authenticator.principals.entries):
        return None

    def admit(authorization: str | None, method: str) -> None:
        metadata = [("authorization", authorization)] if authorization else []
        path = method if method.startswith("/") else f"/{SERVICE_NAME}/{method}"  # explain's is a path
        authenticator.admit(metadata, {}, roles.get(path, ADMIN), method)

    return admit


def _rest_tls(settings: ServingSettings) -> ServerTls | None:
    """The gRPC server's TLS for REST too (mTLS included)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = settings.tls_ca_file if settings.tls_require_client_cert else None
    return ServerTls(settings.tls_cert_file, settings.tls_key_file, client_ca)


def replica_id(settings: ServingSettings) -> str:
    """This process's name: the instance id, plus the worker index when there are several."""
    if settings.workers == 1:
        return settings.instance_id
    return f"{settings.instance_id}-{settings.worker_index}"


def build(settings: ServingSettings | None = None) -> Service:
    return build_serving(settings)[0]


def build_serving(settings: ServingSettings | None = None) -> tuple[Service, RestEndpoint | None]:
    """The service, and its REST endpoint (None when http_enabled is off) to learn its port from."""
    settings = settings or ServingSettings()
    topics = Topics(settings.topic_prefix, settings.topic_partitions, settings.topic_replication_factor)
    broker = build_broker(settings, "serving")
    registry = RegistryModelSource(
        settings.registry_address,
        settings.registry_timeout_seconds,
        ClientSecurity.of(settings),
    )
    replica = replica_id(settings)
    startup, health = _readiness(settings)

    async def on_loaded(model: LoadedModel) -> None:
        # grpc.health.v1 per model: the service name is the model's name.
        await health.set(model.name, health_pb2.HealthCheckResponse.SERVING)

    async def on_load_failed(failure: LoadFailure) -> None:
        await publish_event(
            broker,
            topics,
            ModelLoadFailed(
                source="cascade/serving",
                subject=failure.model,
                model=failure.model,
                model_version=failure.version,
                reason=failure.reason,
                detail=failure.detail,
                serving_version=failure.serving_version,
                instance=replica,
            ),
        )

    repository = ModelRepository(registry, settings.keep_versions, on_loaded, on_load_failed, startup)

    async def publish(event: PredictionLogged) -> None:
        await publish_event(broker, topics, event)

    prediction_log = PredictionLog(
        publish, settings.prediction_log_sample_rate, settings.prediction_log_queue_size
    )
    kafka_api.register(broker, repository, topics, replica)
    live_stats, comparisons, reporter = _live_traffic(settings, broker, topics, replica)
    servicer = InferenceServicer(
        repository,
        prediction_log,
        _server_version(),
        inline_max_rows=settings.inline_max_rows,
        instances=settings.workers,
        live_stats=live_stats,
        comparisons=comparisons,
        batching=BatchingPolicy(
            enabled=settings.batching_enabled,
            max_delay_seconds=settings.batching_max_delay_microseconds / 1e6,
            max_batch_rows=settings.batching_max_batch_rows,
        ),
    )
    background: list[asyncio.Task[None]] = []
    roles = serving_roles(settings.auth_open_inference)
    explainer = build_explainer(settings, repository)
    rest = None
    if settings.http_enabled:
        # The same servicer, so REST shares the loaded models, every hot swap, the statistics and
        # the prediction log; the same roles, so each endpoint needs what its gRPC twin needs.
        rest = RestEndpoint(
            rest_app(servicer, rest_admission(Authenticator.of(settings), roles), explainer),
            settings.grpc_host,
            settings.http_port,
            share_port=settings.workers > 1,
            grace_seconds=settings.shutdown_grace_seconds,
            tls=_rest_tls(settings),
        )

    def add_servicer(server: grpc.aio.Server) -> None:
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        if explainer is not None:
            explain.register(server, explainer)

    async def start() -> None:
        # Loading champions waits for the registry in the background: start-up never blocks on it,
        # and each model is served as soon as it is loaded (ModelReady tells which). The replica
        # is ready (health, ServerReady) once all are, or the start-up budget is spent.
        background.append(asyncio.create_task(repository.sync_all_until_done(), name="load-champions"))
        background.append(asyncio.create_task(health.open_when_ready(startup), name="become-ready"))
        prediction_log.start()
        comparisons.start()
        reporter.start()
        if rest is not None:
            await rest.start()
        servicer.ready = True

    async def stop() -> None:
        if rest is not None:
            await rest.stop()
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await prediction_log.stop()
        await reporter.stop()
        await comparisons.stop()
        if explainer is not None:
            await explainer.close()
        await registry.close()

    service = Service(
        name="serving",
        settings=settings,
        broker=broker,
        grpc_registrars=[add_servicer],
        grpc_service_names=_grpc_service_names(settings),
        grpc_roles=roles,
        on_start=[start],
        on_stop=[stop],
        health=health,
        share_port=settings.workers > 1,
    )
    return service, rest


def _readiness(settings: ServingSettings) -> tuple[StartupLoad, GatedHealth]:
    """Not ready until the champions, canaries and shadows the registry names are loaded (or
    refused), within the start-up budget: see cascade.services.serving.readiness."""
    startup = StartupLoad(settings.startup_budget_seconds)
    return startup, GatedHealth(["", *_grpc_service_names(settings)], startup.reason)


def _grpc_service_names(settings: ServingSettings) -> list[str]:
    return [SERVICE_NAME, *([explain.EXPLAIN_SERVICE_NAME] if settings.explain_enabled else [])]


def build_explainer(settings: ServingSettings, repository: ModelRepository) -> explain.ExplainCore | None:
    """Explain's core (None when explain_enabled is off): off the inference path, with its own
    processes and its own registry client; ModelInfer is untouched."""
    if not settings.explain_enabled:
        return None
    return explain.ExplainCore(
        repository,
        explain.RegistrySubjects(
            settings.registry_address, settings.registry_timeout_seconds, ClientSecurity.of(settings)
        ),
        explain.ExplainPool(settings.explain_workers, settings.explain_nice),
        explain.ExplainLimits(
            max_rows=settings.explain_max_rows,
            max_evaluations=settings.explain_max_evaluations,
            deadline_seconds=settings.explain_deadline_seconds,
            max_concurrent=settings.explain_max_concurrent,
            background_rows=settings.explain_background_rows,
        ),
    )


def _live_traffic(
    settings: ServingSettings, broker: KafkaBroker, topics: Topics, replica: str
) -> tuple[LiveStats, Comparisons, LiveStatsReporter]:
    """While a model has a canary or a shadow: what each version answered or scored, and both
    versions' outputs on the same requests (scored off the answer path), for the monitor."""

    async def publish(event: Event) -> None:
        await publish_event(broker, topics, event)

    live_stats = LiveStats()
    comparisons = Comparisons(
        publish,
        live_stats,
        replica,
        settings.shadow_queue_size,
        settings.compare_max_rows,
        settings.shadow_nice,
    )
    reporter = LiveStatsReporter(
        live_stats, publish, replica, settings.live_stats_interval_seconds, comparisons.flush
    )
    return live_stats, comparisons, reporter


def _server_version() -> str:
    try:
        return package_version("cascade-mlops")
    except PackageNotFoundError:
        return "0.0.0"
