"""Wires the validator together: clients of ingest and registry, domain core, Kafka."""

from __future__ import annotations

from cascade.client.channels import ClientSecurity
from cascade.client.ingest import IngestClient
from cascade.client.registry import RegistryClient
from cascade.events import ModelValidated, Topics
from cascade.messaging import build_broker, publish_event
from cascade.service import Service
from cascade.services.validator import kafka_api
from cascade.services.validator.core import ValidatorCore
from cascade.services.validator.settings import ValidatorSettings


def build(settings: ValidatorSettings | None = None) -> Service:
    settings = settings or ValidatorSettings()
    topics = Topics(settings.topic_prefix, settings.topic_partitions, settings.topic_replication_factor)
    broker = build_broker(settings, "validator")
    security = ClientSecurity.of(settings)
    ingest = IngestClient.connect(settings.ingest_address, security)
    registry = RegistryClient.connect(settings.registry_address, security)

    async def emit(event: ModelValidated) -> None:
        await publish_event(broker, topics, event)

    core = ValidatorCore(settings, ingest, registry, emit)
    kafka_api.register(broker, core, topics)

    async def close_clients() -> None:
        await ingest.close()
        await registry.close()

    return Service(name="validator", settings=settings, broker=broker, on_stop=[close_clients])
