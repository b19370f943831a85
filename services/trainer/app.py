"""Wires the trainer together: clients of ingest and registry, domain core, Kafka."""

from __future__ import annotations

from services.trainer import kafka_api
from services.trainer.core import TrainerCore
from services.trainer.settings import TrainerSettings
from shared.events import ModelTrained, Topics
from shared.grpc_io import open_channel
from shared.messaging import build_broker, publish_event
from shared.service import Service


def build(settings: TrainerSettings | None = None) -> Service:
    settings = settings or TrainerSettings()
    topics = Topics(settings.topic_prefix)
    broker = build_broker(settings, "trainer")
    ingest = open_channel(settings.ingest_address)
    registry = open_channel(settings.registry_address)

    async def emit(event: ModelTrained) -> None:
        await publish_event(broker, topics, event)

    core = TrainerCore(settings, ingest, registry, emit)
    kafka_api.register(broker, core, topics)

    async def close_channels() -> None:
        await ingest.close(None)
        await registry.close(None)

    return Service(name="trainer", settings=settings, broker=broker, on_stop=[close_channels])
