"""Serving's Kafka side: a promotion or a change of a model's traffic split makes every replica follow
the registry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from faststream.kafka import KafkaBroker

from cascade.errors import FailedPrecondition
from cascade.events import ModelPromoted, ModelTrafficChanged, Topics
from cascade.messaging import subscriber_options
from cascade.services.serving.repository import ModelRepository

__all__ = ["consumer_group", "register"]


def consumer_group(topics: Topics, instance_id: str) -> str:
    """One group per replica, so that every replica, not just one of them, sees each promotion and
    each change of a split."""
    return f"{topics.prefix}.serving.{instance_id}"


def register(broker: KafkaBroker, repository: ModelRepository, topics: Topics, instance_id: str) -> None:
    options = subscriber_options(consumer_group(topics, instance_id))

    @broker.subscriber(topics.declared(ModelPromoted), **options)
    async def on_model_promoted(event: ModelPromoted) -> None:
        # The alias is re-read from the registry rather than taken from the event, so a repeated or
        # late event cannot roll the champion back. Unavailable (registry down) means redelivery.
        # A refused version (corrupt or incompatible) is no reason to redeliver or dead-letter the
        # promotion: the repository has reported it (metric and ModelLoadFailed event) and the old
        # version keeps serving. A promotion ends a rollout, so the split is re-read too.
        await _follow(repository, event.model, repository.sync_champion)
        await _follow(repository, event.model, repository.sync_traffic)

    @broker.subscriber(topics.declared(ModelTrafficChanged), **options)
    async def on_traffic_changed(event: ModelTrafficChanged) -> None:
        # Re-read as well (GetTraffic); a split older than the installed one is ignored there.
        await _follow(repository, event.model, repository.sync_traffic)


async def _follow(repository: ModelRepository, model: str, sync: Callable[[str], Awaitable[bool]]) -> None:
    try:
        await sync(model)
    except FailedPrecondition:
        if model not in repository.failures:
            raise
