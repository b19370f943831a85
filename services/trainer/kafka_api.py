"""The trainer's Kafka side: *data arrived*, *drift detected* and *training requested* trigger runs;
*study opened* (read by every replica, each in a group of its own) invites it into another's study."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from cascade.events import DataArrived, DriftDetected, StudyOpened, Topics, TrainingRequested
from cascade.messaging import subscriber_options
from cascade.services.trainer.core import WORKER, TrainerCore


def register(broker: KafkaBroker, core: TrainerCore, topics: Topics) -> None:
    @broker.subscriber(topics.declared(DataArrived), **subscriber_options(f"{topics.prefix}.trainer"))
    async def on_data_arrived(event: DataArrived) -> None:
        await core.on_data_arrived(event)

    @broker.subscriber(topics.declared(DriftDetected), **subscriber_options(f"{topics.prefix}.trainer"))
    async def on_drift_detected(event: DriftDetected) -> None:
        await core.on_drift_detected(event)

    @broker.subscriber(topics.declared(TrainingRequested), **subscriber_options(f"{topics.prefix}.trainer"))
    async def on_training_requested(event: TrainingRequested) -> None:
        await core.on_training_requested(event)

    if core.settings.study_storage_url is not None:
        replica_group = f"{topics.prefix}.trainer.studies.{WORKER}"

        @broker.subscriber(topics.declared(StudyOpened), **subscriber_options(replica_group))
        async def on_study_opened(event: StudyOpened) -> None:
            await core.on_study_opened(event)
