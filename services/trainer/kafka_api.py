"""The trainer's Kafka side: each *data arrived*, and each *drift detected*, triggers a run."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from services.trainer.core import TrainerCore
from shared.events import DataArrived, DriftDetected, Topics
from shared.messaging import subscriber_options


def register(broker: KafkaBroker, core: TrainerCore, topics: Topics) -> None:
    @broker.subscriber(topics.for_event(DataArrived), **subscriber_options(f"{topics.prefix}.trainer"))
    async def on_data_arrived(event: DataArrived) -> None:
        await core.on_data_arrived(event)

    @broker.subscriber(topics.for_event(DriftDetected), **subscriber_options(f"{topics.prefix}.trainer"))
    async def on_drift_detected(event: DriftDetected) -> None:
        await core.on_drift_detected(event)
