"""Wires the monitor together: store, reference source, domain core, Kafka and gRPC transports."""

from __future__ import annotations

import grpc

from services.monitor import kafka_api
from services.monitor.core import MonitorCore
from services.monitor.grpc_api import SERVICE_NAME, MonitorServicer
from services.monitor.references import GrpcReferenceSource
from services.monitor.settings import MonitorSettings
from services.monitor.store import MonitorStore
from shared.events import Topics
from shared.messaging import build_broker
from shared.service import Service
from shared.stubs.cascade.monitor.v1 import monitor_pb2_grpc

__all__ = ["build"]


def build(settings: MonitorSettings | None = None) -> Service:
    settings = settings or MonitorSettings()
    broker = build_broker(settings, "monitor")
    store = MonitorStore(settings.data_dir)
    source = GrpcReferenceSource(
        settings.registry_address, settings.ingest_address, settings.rpc_timeout_seconds
    )
    core = MonitorCore(
        store,
        source,
        window_size=settings.window_size,
        evaluate_every=settings.evaluate_every,
        p_value_threshold=settings.p_value_threshold,
    )
    kafka_api.register(broker, core, Topics(settings.topic_prefix))
    servicer = MonitorServicer(core)

    def add_servicer(server: grpc.aio.Server) -> None:
        monitor_pb2_grpc.add_MonitorServiceServicer_to_server(servicer, server)

    async def close_store() -> None:
        store.close()

    return Service(
        name="monitor",
        settings=settings,
        broker=broker,
        grpc_registrars=[add_servicer],
        grpc_service_names=[SERVICE_NAME],
        on_start=[source.open],  # channels belong to the running event loop
        on_stop=[source.close, close_store],
    )
