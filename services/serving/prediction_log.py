"""Sampled predictions for the monitor, published off the request path: the rows, the first output
(a classifier's label, a regressor's value), a classifier's probability of each class, and the
version that answered.

`record` only samples and enqueues references to the arrays it is given; building and publishing the
events happens in a background task. When the queue is full (Kafka slow or down) samples are dropped
and counted: a prediction is never delayed for the sake of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter

from cascade.events import PredictionLogged
from cascade.services.serving.repository import LoadedModel
from cascade.services.serving.traffic import Role

__all__ = ["SOURCE", "PredictionLog"]

log = logging.getLogger(__name__)

DROPPED = Counter(
    "cascade_serving_prediction_logs_dropped_total",
    "Sampled predictions never published, by reason: queue_full, publish_failed, unloggable.",
    ["reason"],
)

SOURCE = "cascade/serving"
# Rows per event, so a large batch still fits in one Kafka message (1 MiB by default).
MAX_ROWS_PER_EVENT = 500
# Probabilities are logged for at most this many classes (500 rows x 20 classes stays well under
# 1 MiB); a model with more classes is logged without them, and its label-free estimate says so.
MAX_LOGGED_CLASSES = 20

Publish = Callable[[PredictionLogged], Awaitable[None]]


@dataclass(frozen=True)
class _Sample:
    model: LoadedModel
    request_id: str
    inputs: npt.NDArray[Any]
    outputs: npt.NDArray[Any]
    probabilities: npt.NDArray[Any] | None = None
    role: Role = "champion"


class PredictionLog:
    def __init__(self, publish: Publish, sample_rate: float = 1.0, queue_size: int = 10000) -> None:
        self._publish = publish
        self.sample_rate = sample_rate
        self._queue: asyncio.Queue[_Sample] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def record(
        self,
        model: LoadedModel,
        request_id: str,
        inputs: npt.NDArray[Any],
        outputs: npt.NDArray[Any],
        probabilities: npt.NDArray[Any] | None = None,
        role: Role = "champion",
    ) -> None:
        """Maybe log one answered request: the model's first input and first output, a
        classifier's probabilities when given, and the side of the traffic split that answered it.
        Never blocks."""
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        try:
            self._queue.put_nowait(_Sample(model, request_id, inputs, outputs, probabilities, role))
        except asyncio.QueueFull:
            DROPPED.labels("queue_full").inc()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._publish_forever(), name="prediction-log")

    async def stop(self) -> None:
        """Stop publishing; what is still queued is lost, which sampling tolerates."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _publish_forever(self) -> None:
        while True:
            sample = await self._queue.get()
            try:
                events = list(
                    events_of(
                        sample.model,
                        sample.request_id,
                        sample.inputs,
                        sample.outputs,
                        sample.probabilities,
                        sample.role,
                    )
                )
            except Exception:  # a model with outputs we cannot log must not stop the logging of others
                log.exception("cannot build the prediction log of %s", sample.model.name)
                DROPPED.labels("unloggable").inc()
                continue
            for event in events:
                await self._publish_one(event)

    async def _publish_one(self, event: PredictionLogged) -> None:
        try:
            await self._publish(event)
        except Exception as exc:
            DROPPED.labels("publish_failed").inc()
            if not self._failing:  # log the change of state, not every lost event
                log.warning("prediction logs cannot be published (%r); dropping them until they can", exc)
            self._failing = True
            return
        if self._failing:
            log.info("prediction logs are published again")
        self._failing = False


def events_of(
    model: LoadedModel,
    request_id: str,
    inputs: npt.NDArray[Any],
    outputs: npt.NDArray[Any],
    probabilities: npt.NDArray[Any] | None = None,
    role: Role = "champion",
) -> Iterator[PredictionLogged]:
    """The events for one request: its rows in chunks of `MAX_ROWS_PER_EVENT`, same request id.
    None for an empty batch or one with non-finite inputs, which the monitor would refuse.
    Probabilities ride along when they are one finite row per input row, of at most
    `MAX_LOGGED_CLASSES` classes."""
    if inputs.size == 0:
        return
    with np.errstate(invalid="ignore"):  # signalling NaNs (e.g. random test bytes) are refused below
        rows = inputs.reshape(inputs.shape[0] if inputs.ndim else 1, -1).astype(np.float64)
    if not np.isfinite(rows).all():
        return
    answers = outputs.astype(np.float64).ravel()
    # Chunk only when every row has the same number of answers, so chunks keep rows and answers paired.
    aligned = answers.size % len(rows) == 0
    step = MAX_ROWS_PER_EVENT if aligned else len(rows)
    per_row = answers.size // len(rows)
    features = _feature_names(model, rows.shape[1])
    request_id = request_id or str(uuid.uuid4())
    per_class = _loggable_probabilities(probabilities, len(rows))
    for start in range(0, len(rows), step):
        stop = start + step
        yield PredictionLogged(
            source=SOURCE,
            subject=model.name,
            model=model.name,
            model_version=model.version,
            request_id=request_id,
            features=features,
            inputs=rows[start:stop].tolist(),
            outputs=(answers[start * per_row : stop * per_row] if aligned else answers).tolist(),
            probabilities=None if per_class is None else per_class[start:stop].tolist(),
            role=role,
        )


def _loggable_probabilities(probabilities: npt.NDArray[Any] | None, rows: int) -> npt.NDArray[Any] | None:
    if probabilities is None or probabilities.ndim != 2 or len(probabilities) != rows:
        return None
    if not 0 < probabilities.shape[1] <= MAX_LOGGED_CLASSES:
        return None
    values = probabilities.astype(np.float64)
    return values if np.isfinite(values).all() else None


def _feature_names(model: LoadedModel, width: int) -> list[str]:
    if len(model.features) == width:
        return list(model.features)
    return [f"x{i}" for i in range(width)]
