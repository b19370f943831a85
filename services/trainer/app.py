"""Wires the trainer together: clients of ingest and registry, domain core, Kafka and gRPC."""

from __future__ import annotations

import grpc

from cascade.client.channels import ClientSecurity
from cascade.client.ingest import IngestClient
from cascade.client.registry import RegistryClient
from cascade.events import Event, Topics
from cascade.messaging import build_broker, publish_event
from cascade.service import Service
from cascade.services.trainer import kafka_api
from cascade.services.trainer.core import TrainerCore
from cascade.services.trainer.grpc_api import ROLES, SERVICE_NAME, TrainerServicer
from cascade.services.trainer.settings import TrainerSettings
from cascade.stubs.cascade.trainer.v1 import trainer_pb2_grpc


def build(settings: TrainerSettings | None = None) -> Service:
    settings = settings or TrainerSettings()
    topics = Topics(settings.topic_prefix, settings.topic_partitions, settings.topic_replication_factor)
    broker = build_broker(settings, "trainer")
    security = ClientSecurity.of(settings)
    ingest = IngestClient.connect(settings.ingest_address, security)
    registry = RegistryClient.connect(settings.registry_address, security)

    async def publish(event: Event) -> None:
        await publish_event(broker, topics, event)

    core = TrainerCore(settings, ingest, registry, emit=publish, progress=publish, announce=publish)
    kafka_api.register(broker, core, topics)
    servicer = TrainerServicer(publish, core, settings.max_import_bytes)

    def add_servicer(server: grpc.aio.Server) -> None:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)

    async def close_channels() -> None:
        await ingest.close()
        await registry.close()

    return Service(
        name="trainer",
        settings=settings,
        broker=broker,
        grpc_registrars=[add_servicer],
        grpc_service_names=[SERVICE_NAME],
        grpc_roles=ROLES,
        on_stop=[close_channels],
    )
