"""Wires serving together: registry client, model repository, prediction log, Kafka and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from services.serving import kafka_api
from services.serving.inference import SERVICE_NAME, InferenceServicer
from services.serving.prediction_log import PredictionLog
from services.serving.registry_client import RegistryClient
from services.serving.repository import LoadedModel, LoadFailure, ModelRepository
from services.serving.settings import ServingSettings
from shared.events import ModelLoadFailed, PredictionLogged, Topics
from shared.messaging import build_broker, publish_event
from shared.service import Service
from shared.stubs.inference import grpc_service_pb2_grpc

__all__ = ["build", "replica_id"]


def replica_id(settings: ServingSettings) -> str:
    """This process's name: the instance id, plus the worker index when there are several."""
    if settings.workers == 1:
        return settings.instance_id
    return f"{settings.instance_id}-{settings.worker_index}"


def build(settings: ServingSettings | None = None) -> Service:
    settings = settings or ServingSettings()
    topics = Topics(settings.topic_prefix, settings.topic_partitions, settings.topic_replication_factor)
    broker = build_broker(settings, "serving")
    registry = RegistryClient(
        settings.registry_address,
        settings.registry_timeout_seconds,
        settings.registry_token.get_secret_value(),
    )
    replica = replica_id(settings)
    health = HealthServicer()

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

    repository = ModelRepository(registry, settings.keep_versions, on_loaded, on_load_failed)

    async def publish(event: PredictionLogged) -> None:
        await publish_event(broker, topics, event)

    prediction_log = PredictionLog(
        publish, settings.prediction_log_sample_rate, settings.prediction_log_queue_size
    )
    kafka_api.register(broker, repository, topics, replica)
    servicer = InferenceServicer(
        repository,
        prediction_log,
        _server_version(),
        inline_max_rows=settings.inline_max_rows,
        instances=settings.workers,
    )
    background: list[asyncio.Task[None]] = []

    def add_servicer(server: grpc.aio.Server) -> None:
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)

    async def start() -> None:
        # Loading champions waits for the registry in the background: start-up never blocks on it,
        # and each model is served as soon as it is loaded (ModelReady tells which).
        background.append(asyncio.create_task(repository.sync_all_until_done(), name="load-champions"))
        prediction_log.start()
        servicer.ready = True

    async def stop() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await prediction_log.stop()
        await registry.close()

    return Service(
        name="serving",
        settings=settings,
        broker=broker,
        grpc_registrars=[add_servicer],
        grpc_service_names=[SERVICE_NAME],
        on_start=[start],
        on_stop=[stop],
        health=health,
        share_port=settings.workers > 1,
    )


def _server_version() -> str:
    try:
        return package_version("cascade-mlops")
    except PackageNotFoundError:
        return "0.0.0"
