"""The monitor's Kafka side: promotions set the reference, logged predictions fill the window,
labels from any producer measure decay. With a rollout policy: traffic changes say which rollout to
follow, serving's live traffic reports and compared predictions (and the canary's logged answers and
their labels) are its evidence."""

from __future__ import annotations

import logging

from faststream.kafka import KafkaBroker

from cascade.events import (
    LabelsArrived,
    LiveTrafficReported,
    ModelPromoted,
    ModelTrafficChanged,
    PredictionLogged,
    PredictionsCompared,
    Topics,
)
from cascade.messaging import subscriber_options
from cascade.services.monitor.core import MonitorCore
from cascade.services.monitor.rollout import RolloutPolicy

__all__ = ["CHAMPION_ALIAS", "register"]

log = logging.getLogger(__name__)

# Serving answers with the champion, so only its training data is the reference for live traffic.
CHAMPION_ALIAS = "champion"


def register(
    broker: KafkaBroker, core: MonitorCore, topics: Topics, rollouts: RolloutPolicy | None = None
) -> None:
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
        if rollouts is not None:
            await rollouts.on_prediction_logged(event)
        if event.role == "canary":
            return  # the drift window is the champion's traffic
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
        if rollouts is not None:
            await rollouts.on_labels(labels.model, labels.request_id, labels.values)
        await core.record_labels(labels.model, labels.request_id, labels.values)

    if rollouts is None:
        return
    policy = rollouts

    @broker.subscriber(topics.declared(ModelTrafficChanged), **options)
    async def on_traffic_changed(event: ModelTrafficChanged) -> None:
        await policy.on_traffic_changed(event)

    @broker.subscriber(topics.declared(LiveTrafficReported), **options)
    async def on_live_traffic(event: LiveTrafficReported) -> None:
        await policy.on_live_traffic(event)

    @broker.subscriber(topics.declared(PredictionsCompared), **options)
    async def on_compared(event: PredictionsCompared) -> None:
        await policy.on_compared(event)
