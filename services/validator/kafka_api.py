"""The validator's Kafka side: each trained candidate gets a verdict."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from cascade.events import ModelTrained, Topics
from cascade.messaging import subscriber_options
from cascade.services.validator.core import ValidatorCore


def register(broker: KafkaBroker, core: ValidatorCore, topics: Topics) -> None:
    @broker.subscriber(topics.declared(ModelTrained), **subscriber_options(f"{topics.prefix}.validator"))
    async def on_model_trained(event: ModelTrained) -> None:
        await core.on_model_trained(event)
