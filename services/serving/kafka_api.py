"""Serving's Kafka side: a promotion makes every replica serve the new champion."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from cascade.errors import FailedPrecondition
from cascade.events import ModelPromoted, Topics
from cascade.messaging import subscriber_options
from cascade.services.serving.repository import ModelRepository

__all__ = ["consumer_group", "register"]


def consumer_group(topics: Topics, instance_id: str) -> str:
    """One group per replica, so that every replica, not just one of them, sees each promotion."""
    return f"{topics.prefix}.serving.{instance_id}"


def register(broker: KafkaBroker, repository: ModelRepository, topics: Topics, instance_id: str) -> None:
    @broker.subscriber(
        topics.declared(ModelPromoted), **subscriber_options(consumer_group(topics, instance_id))
    )
    async def on_model_promoted(event: ModelPromoted) -> None:
        # The alias is re-read from the registry rather than taken from the event, so a repeated or
        # late event cannot roll the champion back. Unavailable (registry down) means redelivery.
        # A refused version (corrupt or incompatible) is no reason to redeliver or dead-letter the
        # promotion: the repository has reported it (metric and ModelLoadFailed event) and the old
        # version keeps serving.
        try:
            await repository.sync_champion(event.model)
        except FailedPrecondition:
            if event.model not in repository.failures:
                raise
