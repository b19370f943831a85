"""Prediction logging: sampling, events, and never blocking or failing the request path."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import REGISTRY

from cascade.events import PredictionLogged
from cascade.services.serving.prediction_log import (
    MAX_LOGGED_CLASSES,
    MAX_ROWS_PER_EVENT,
    PredictionLog,
    events_of,
)
from cascade.services.serving.repository import LoadedModel, ModelRepository

from .support import MODEL, TrainedModel


class NoSource:
    async def models_with_champion(self) -> list[str]:
        raise AssertionError

    async def champion(self, model: str) -> object:
        raise AssertionError

    async def artifact(self, ref: object) -> bytes:
        raise AssertionError


@pytest.fixture
async def model(models: dict[int, TrainedModel]) -> LoadedModel:
    return await ModelRepository(NoSource()).load(MODEL, 3, models[1].onnx, features=["a", "b"])  # type: ignore[arg-type]


def dropped(reason: str) -> float:
    value = REGISTRY.get_sample_value("cascade_serving_prediction_logs_dropped_total", {"reason": reason})
    return value or 0.0


def test_event_names_features_and_flattens_the_first_output(model: LoadedModel) -> None:
    inputs = np.arange(6, dtype=np.float32).reshape(3, 2)
    (event,) = events_of(model, "r-1", inputs, np.array([1, 0, 1], dtype=np.int64))
    assert (event.subject, event.model, event.model_version, event.request_id) == (MODEL, MODEL, 3, "r-1")
    assert event.source == "cascade/serving"
    assert event.features == ["a", "b"]
    assert event.inputs == [[0, 1], [2, 3], [4, 5]]
    assert event.outputs == [1.0, 0.0, 1.0]


def test_a_classifiers_probabilities_ride_along_chunked_with_their_rows(model: LoadedModel) -> None:
    rows = MAX_ROWS_PER_EVENT + 2
    probabilities = np.linspace(0, 1, rows, dtype=np.float32)[:, None] * [1.0, -1.0] + [0.0, 1.0]
    events = list(events_of(model, "p", np.zeros((rows, 2), np.float32), np.zeros(rows), probabilities))
    assert [len(e.probabilities or []) for e in events] == [MAX_ROWS_PER_EVENT, 2]
    assert events[1].probabilities == probabilities[-2:].astype(np.float64).tolist()


def test_probabilities_that_cannot_be_paired_or_are_too_wide_are_left_out(model: LoadedModel) -> None:
    inputs = np.zeros((3, 2), np.float32)
    for unloggable in (
        np.full((2, 2), 0.5),  # not one per row
        np.full((3, MAX_LOGGED_CLASSES + 1), 1 / (MAX_LOGGED_CLASSES + 1)),  # too many classes
        np.array([[0.5, np.nan]] * 3),
    ):
        (event,) = events_of(model, "q", inputs, np.zeros(3), unloggable)
        assert event.probabilities is None and event.outputs == [0.0, 0.0, 0.0]


async def test_served_answers_log_the_real_probabilities_and_the_answering_version(
    model: LoadedModel, models: dict[int, TrainedModel]
) -> None:
    rows = np.random.default_rng(0).normal(size=(2, model.inputs[0].shape[1])).astype(np.float32)
    results = model.predict({model.inputs[0].name: rows})
    (event,) = events_of(model, "r", rows, results[0], results[1])
    assert event.model_version == 3
    np.testing.assert_allclose(event.probabilities, models[1].probabilities(rows), atol=1e-5)


def test_unknown_feature_names_fall_back_to_positions(model: LoadedModel) -> None:
    (event,) = events_of(model, "", np.zeros((1, 3), np.float32), np.zeros(1))
    assert event.features == ["x0", "x1", "x2"]
    assert event.request_id  # a generated one


def test_empty_or_non_finite_batches_are_not_logged(model: LoadedModel) -> None:
    # The monitor refuses such rows; logging them would only fill its dead-letter topic.
    assert list(events_of(model, "", np.zeros((0, 2), np.float32), np.zeros(0))) == []
    assert list(events_of(model, "", np.array([[1, np.nan]], np.float32), np.zeros(1))) == []


def test_large_batches_are_split_keeping_rows_and_answers_together(model: LoadedModel) -> None:
    rows = MAX_ROWS_PER_EVENT + 1
    events = list(events_of(model, "big", np.zeros((rows, 2), np.float32), np.arange(rows)))
    assert [len(e.inputs) for e in events] == [MAX_ROWS_PER_EVENT, 1]
    assert events[1].outputs == [float(MAX_ROWS_PER_EVENT)]
    assert {e.request_id for e in events} == {"big"}


async def test_records_are_published_in_the_background(model: LoadedModel) -> None:
    published: asyncio.Queue[PredictionLogged] = asyncio.Queue()

    async def publish(event: PredictionLogged) -> None:
        published.put_nowait(event)

    log = PredictionLog(publish)
    log.start()
    log.record(model, "r-2", np.zeros((1, 2), np.float32), np.zeros(1))
    event = await asyncio.wait_for(published.get(), 5)
    await log.stop()
    assert event.request_id == "r-2"


async def test_a_full_queue_drops_and_counts(model: LoadedModel) -> None:
    async def never(event: PredictionLogged) -> None:
        raise AssertionError("not started, so nothing is published")

    log = PredictionLog(never, queue_size=2)
    before = dropped("queue_full")
    for _ in range(5):
        log.record(model, "", np.zeros((1, 2), np.float32), np.zeros(1))  # returns at once, always
    assert dropped("queue_full") == before + 3


async def test_sample_rate_zero_logs_nothing(model: LoadedModel) -> None:
    async def never(event: PredictionLogged) -> None:
        raise AssertionError

    log = PredictionLog(never, sample_rate=0.0, queue_size=1)
    before = dropped("queue_full")
    for _ in range(3):
        log.record(model, "", np.zeros((1, 2), np.float32), np.zeros(1))
    assert dropped("queue_full") == before


async def test_publish_failures_are_counted_and_publishing_goes_on(model: LoadedModel) -> None:
    published: asyncio.Queue[str] = asyncio.Queue()

    async def flaky(event: PredictionLogged) -> None:
        if event.request_id == "fails":
            raise ConnectionError("kafka down")
        published.put_nowait(event.request_id)

    log = PredictionLog(flaky)
    log.start()
    before = dropped("publish_failed")
    log.record(model, "fails", np.zeros((1, 2), np.float32), np.zeros(1))
    log.record(model, "works", np.zeros((1, 2), np.float32), np.zeros(1))
    assert await asyncio.wait_for(published.get(), 5) == "works"
    await log.stop()
    assert dropped("publish_failed") == before + 1
