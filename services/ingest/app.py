"""Wires ingest together: store, domain core, Kafka and gRPC transports."""

from __future__ import annotations

import asyncio

import grpc

from cascade.events import Event, Topics
from cascade.messaging import build_broker, publish_event
from cascade.objectstore import open_object_store
from cascade.service import Service
from cascade.services.ingest import kafka_api
from cascade.services.ingest.core import IngestCore
from cascade.services.ingest.grpc_api import ROLES, SERVICE_NAME, IngestServicer
from cascade.services.ingest.settings import IngestSettings
from cascade.services.ingest.store import IngestStore
from cascade.stubs.cascade.ingest.v1 import ingest_pb2_grpc


def build(settings: IngestSettings | None = None) -> Service:
    settings = settings or IngestSettings()
    topics = Topics(settings.topic_prefix, settings.topic_partitions, settings.topic_replication_factor)
    broker = build_broker(settings, "ingest")
    segment_store = open_object_store(settings.segment_url, settings) if settings.segment_url else None
    store = IngestStore(settings.data_dir, settings.database_url, segment_store)

    async def emit(event: Event) -> None:
        await publish_event(broker, topics, event)

    core = IngestCore(
        store,
        emit,
        settings.max_classes,
        settings.max_columns,
        settings.event_wait_seconds,
        settings.outbox_interval_seconds,
        settings.outbox_lease_seconds,
    )
    relay: list[asyncio.Task[None]] = []

    async def start_relay() -> None:
        relay.append(asyncio.create_task(core.outbox.run()))

    kafka_api.register(broker, core, topics, settings.max_record_bytes)
    servicer = IngestServicer(core, settings.max_upload_bytes)

    def add_servicer(server: grpc.aio.Server) -> None:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)

    async def close_store() -> None:
        for task in relay:
            task.cancel()
        await asyncio.gather(*relay, return_exceptions=True)  # the relays let their leases go
        store.close()

    return Service(
        name="ingest",
        settings=settings,
        broker=broker,
        grpc_registrars=[add_servicer],
        grpc_service_names=[SERVICE_NAME],
        grpc_roles=ROLES,
        on_start=[start_relay],
        on_stop=[close_store],
    )
