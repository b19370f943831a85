"""The monitor's Kafka side: promotions set the reference, logged predictions fill the window,
labels from any producer measure decay. With a rollout policy: traffic changes say which rollout to
follow, serving's live traffic reports and compared predictions (and the canary's logged answers and
their labels) are its evidence.

Logged predictions and labels are consumed in batches: a batch's prediction events go to the core
together (`record_predictions_many`: one store transaction per model and `evaluate_every` rows),
its labels concurrently (their joins share transactions: core's GroupCommit), and the batch's
offsets are committed once all its rows are (cascade.messaging's batch rules: a malformed event is
dead-lettered alone, a failed transaction retries the batch within the budget)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from cascade.errors import classify
from cascade.events import (
    LabelsArrived,
    LiveTrafficReported,
    ModelPromoted,
    ModelTrafficChanged,
    PredictionLogged,
    PredictionsCompared,
    Topics,
)
from cascade.messaging import batch_subscriber_options, consume_batch, each_concurrently, subscriber_options
from cascade.services.monitor.core import LoggedPredictions, MonitorCore
from cascade.services.monitor.rollout import RolloutPolicy

__all__ = ["CHAMPION_ALIAS", "register"]

log = logging.getLogger(__name__)

# Serving answers with the champion, so only its training data is the reference for live traffic.
CHAMPION_ALIAS = "champion"


def register(
    broker: KafkaBroker,
    core: MonitorCore,
    topics: Topics,
    rollouts: RolloutPolicy | None = None,
    *,
    batch_max_records: int = 64,
) -> None:
    """The subscribers. Logged predictions and labels come `batch_max_records` at most at a time:
    one transaction per model per batch (64 one-row events commit in about the time of a few single
    ones: bench/RESULTS.md, "Monitor: shared state")."""
    options = subscriber_options(f"{topics.prefix}.monitor")
    batches = batch_subscriber_options(f"{topics.prefix}.monitor", max_records=batch_max_records)

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

    @broker.subscriber(topics.declared(PredictionLogged), **batches)
    async def on_predictions_logged(message: KafkaMessage) -> None:
        await consume_batch(broker, message, PredictionLogged, on_predictions)

    async def on_predictions(events: Sequence[PredictionLogged]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = [None] * len(events)
        if rollouts is not None:  # in memory: the rollout's evidence, one event at a time
            for index, event in enumerate(events):
                try:
                    await rollouts.on_prediction_logged(event)
                except Exception as exc:
                    if classify(exc) != "permanent":
                        raise
                    outcomes[index] = exc
        # The drift window is the champion's traffic; its events go to the store together.
        champions = [i for i, event in enumerate(events) if event.role != "canary" and outcomes[i] is None]
        recorded = await core.record_predictions_many(
            [
                LoggedPredictions(
                    event.model,
                    event.features,
                    event.inputs,
                    event.outputs,
                    event.request_id,
                    event.probabilities,
                    model_version=event.model_version,
                )
                for event in (events[i] for i in champions)
            ]
        )
        for index, outcome in zip(champions, recorded, strict=True):
            if isinstance(outcome, Exception):
                outcomes[index] = outcome
        return outcomes

    @broker.subscriber(topics.declared(LabelsArrived), **batches)
    async def on_labels_batch(message: KafkaMessage) -> None:
        # Joins arriving together share a transaction (core's GroupCommit).
        await consume_batch(broker, message, LabelsArrived, each_concurrently(on_labels))

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
