"""The trainer's Kafka side: each *data arrived* triggers a run."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from services.trainer.core import TrainerCore
from shared.events import DataArrived, Topics
from shared.messaging import subscriber_options


def register(broker: KafkaBroker, core: TrainerCore, topics: Topics) -> None:
    @broker.subscriber(topics.for_event(DataArrived), **subscriber_options(f"{topics.prefix}.trainer"))
    async def on_data_arrived(event: DataArrived) -> None:
        await core.on_data_arrived(event)
