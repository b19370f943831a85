"""The monitor consumes logged predictions and labels in batches (FastStream's batch subscriber, in
memory): a batch's events share one store transaction, a malformed one is dead-lettered alone, and a
failed transaction acknowledges nothing and is retried within the budget."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from faststream.kafka.message import FakeConsumer

from cascade.events import LabelsArrived, PredictionLogged
from cascade.services.monitor.store import MonitorStore, PredictionBatch

from .support import Dependencies, normal_rows
from .test_kafka_api import EVERY, drift_report, predictions, promoted, running, settings_for


class Transactions:
    """Wraps MonitorStore.append_windows (one store transaction per call) to count its calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.groups: list[int] = []
        original = MonitorStore.append_windows

        def counted(
            store: MonitorStore, model: str, batches: Sequence[PredictionBatch], **kwargs: Any
        ) -> Any:
            self.groups.append(len(batches))
            return original(store, model, batches, **kwargs)

        monkeypatch.setattr(MonitorStore, "append_windows", counted)


async def test_a_batch_of_events_is_committed_in_one_transaction(
    tmp_path: Path, dependencies: Dependencies, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = Transactions(monkeypatch)
    settings = settings_for(tmp_path, dependencies.address, dependencies.address).model_copy(
        update={"evaluate_every": 64, "window_size": 128}
    )
    async with running(settings) as app:
        await app.publish(promoted())
        events = [predictions(normal_rows(1, seed=seed)) for seed in range(64)]
        await app.broker.publish_batch(*events, topic=app.topics.for_event(PredictionLogged))

        assert transactions.groups == [64]  # one transaction for the batch's 64 events
        report = await drift_report(app.monitor)
        assert (report.predictions_seen, report.window_size) == (64, 64)
        assert app.dead_letters == []


async def test_a_poison_message_is_dead_lettered_and_its_batch_mates_recorded(
    tmp_path: Path, dependencies: Dependencies, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = Transactions(monkeypatch)
    settings = settings_for(tmp_path, dependencies.address, dependencies.address).model_copy(
        update={"min_labels": 5}
    )
    async with running(settings) as app:
        await app.publish(promoted())
        good = [predictions(normal_rows(1, seed=seed)) for seed in range(EVERY)]
        wrong_width = predictions(np.ones((3, 2)), features=["alpha", "beta"])
        canary = predictions(normal_rows(2, seed=99)).model_copy(update={"role": "canary"})
        topic = app.topics.for_event(PredictionLogged)
        await app.broker.publish_batch(
            *good[:5], b"{not json", *good[5:10], wrong_width, canary, *good[10:], topic=topic
        )

        assert transactions.groups == [EVERY]  # the good ones together; a canary's rows are not the window's
        assert (await drift_report(app.monitor)).predictions_seen == EVERY
        assert len(app.dead_letters) == 2
        assert app.dead_letters[0].startswith("ValidationError")
        assert app.dead_letters[1].startswith("InvalidArgument") and "reference" in app.dead_letters[1]

        # Labels in a batch with a malformed one: they are joined, it is dead-lettered.
        labels = [LabelsArrived(model=event.model, request_id=event.request_id, label=0.0) for event in good]
        await app.broker.publish_batch(*labels, b'{"model": ""}', topic=app.topics.for_event(LabelsArrived))
        assert (await drift_report(app.monitor)).performance.labelled_rows == EVERY
        assert len(app.dead_letters) == 3 and app.dead_letters[2].startswith("ValidationError")


async def test_a_failed_commit_acknowledges_nothing_and_is_retried_within_the_budget(
    tmp_path: Path, dependencies: Dependencies, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[None] = []

    async def commit(self: FakeConsumer) -> None:
        commits.append(None)

    monkeypatch.setattr(FakeConsumer, "commit", commit)
    settings = settings_for(tmp_path, dependencies.address, dependencies.address).model_copy(
        update={"retry_max_attempts": 2}
    )
    async with running(settings) as app:
        await app.publish(promoted())
        acknowledged = len(commits)
        topic = app.topics.for_event(PredictionLogged)
        events = [predictions(normal_rows(1, seed=seed)) for seed in range(EVERY)]

        def broken(*args: object, **kwargs: object) -> None:  # inside the transaction, after the inserts
            raise OSError("disk I/O error")

        with monkeypatch.context() as failing:
            failing.setattr(MonitorStore, "_remember", broken)
            with pytest.raises(OSError, match="disk I/O error"):  # in memory, the redelivery is the error
                await app.broker.publish_batch(*events, topic=topic)
            assert len(commits) == acknowledged and app.dead_letters == []  # nothing acknowledged
            await app.broker.publish_batch(*events, topic=topic)  # redelivered: its last try
            exhausted = "retries exhausted after 2 attempts: OSError: disk I/O error"
            assert app.dead_letters == [exhausted] * EVERY
            assert len(commits) == acknowledged + 1  # given up, dead-lettered, then acknowledged
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # rolled back: no row kept, no report
            await drift_report(app.monitor)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

        fresh = [predictions(normal_rows(1, seed=seed)) for seed in range(EVERY)]
        await app.broker.publish_batch(*fresh, topic=topic)  # the store works again
        assert (await drift_report(app.monitor)).predictions_seen == EVERY
