"""The registry's Kafka side: verdicts from the validator move aliases."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from cascade.events import ModelValidated, Topics
from cascade.messaging import subscriber_options
from cascade.services.registry.core import RegistryCore


def register(broker: KafkaBroker, core: RegistryCore, topics: Topics) -> None:
    @broker.subscriber(topics.declared(ModelValidated), **subscriber_options(f"{topics.prefix}.registry"))
    async def on_model_validated(event: ModelValidated) -> None:
        await core.on_validated(event)
