"""Wires the validator together: clients of ingest and registry, domain core, Kafka."""

from __future__ import annotations

from services.validator import kafka_api
from services.validator.core import ValidatorCore
from services.validator.settings import ValidatorSettings
from shared.events import ModelValidated, Topics
from shared.grpc_io import open_channel
from shared.messaging import build_broker, publish_event
from shared.security import ClientSecurity
from shared.service import Service


def build(settings: ValidatorSettings | None = None) -> Service:
    settings = settings or ValidatorSettings()
    topics = Topics(settings.topic_prefix, settings.topic_partitions, settings.topic_replication_factor)
    broker = build_broker(settings, "validator")
    security = ClientSecurity.of(settings)
    ingest = open_channel(settings.ingest_address, security)
    registry = open_channel(settings.registry_address, security)

    async def emit(event: ModelValidated) -> None:
        await publish_event(broker, topics, event)

    core = ValidatorCore(settings, ingest, registry, emit)
    kafka_api.register(broker, core, topics)

    async def close_channels() -> None:
        await ingest.close(None)
        await registry.close(None)

    return Service(name="validator", settings=settings, broker=broker, on_stop=[close_channels])
