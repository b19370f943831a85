"""The monitor's Kafka side: promotions set the reference, logged predictions fill the window,
labels from any producer measure decay."""

from __future__ import annotations

import logging

from faststream.kafka import KafkaBroker

from cascade.events import LabelsArrived, ModelPromoted, PredictionLogged, Topics
from cascade.messaging import subscriber_options
from cascade.services.monitor.core import MonitorCore

__all__ = ["CHAMPION_ALIAS", "register"]

log = logging.getLogger(__name__)

# Serving answers with the champion, so only its training data is the reference for live traffic.
CHAMPION_ALIAS = "champion"


def register(broker: KafkaBroker, core: MonitorCore, topics: Topics) -> None:
    options = subscriber_options(f"{topics.prefix}.monitor")

    @broker.subscriber(topics.declared(ModelPromoted), **options)
    async def on_model_promoted(event: ModelPromoted) -> None:
        if event.alias != CHAMPION_ALIAS:
            log.info(
                "%s v%d promoted to %r, not the champion; ignored",
                event.model,
                event.model_version,
                event.alias,
            )
            return
        await core.set_reference(event.model, event.model_version)

    @broker.subscriber(topics.declared(PredictionLogged), **options)
    async def on_prediction_logged(event: PredictionLogged) -> None:
        await core.record_predictions(
            event.model,
            event.features,
            event.inputs,
            event.outputs,
            event.request_id,
            event.probabilities,
            model_version=event.model_version,
        )

    @broker.subscriber(topics.declared(LabelsArrived), **options)
    async def on_labels(labels: LabelsArrived) -> None:
        await core.record_labels(labels.model, labels.request_id, labels.values)
