"""Group commit: events arriving together share one store transaction, each caller returns only once
its rows are committed, and a failed transaction fails every caller in it with nothing kept. The
store's batched append and join on SQLite and PostgreSQL; label joins do not wait for a drift
evaluation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from cascade.database import sqlite_url
from cascade.events import DriftDetected
from cascade.services.monitor.batching import GroupCommit
from cascade.services.monitor.store import LabelBatch, MonitorStore, PredictionBatch, ReferenceInfo
from tests.databases import database_url_for

from .support import FEATURES, normal_rows
from .test_loop import EVERY, MODEL, Emitted, core_of, send


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MonitorStore]:
    opened = MonitorStore(
        tmp_path, database_url_for(request, "monitor_batching", sqlite_url(tmp_path / "monitor.sqlite3"))
    )
    yield opened
    opened.close()


class Flushes:
    """A flush that records its groups and waits for `release` before each one commits."""

    def __init__(self, fail: bool = False) -> None:
        self.groups: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.groups.append(list(items))
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the transaction failed")
        return [item * 10 for item in items]


async def test_items_submitted_during_a_flush_share_the_next_one() -> None:
    flushes = Flushes()
    group = GroupCommit(flushes)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first flush has taken item 1 and waits
    later = [asyncio.create_task(group.submit(item)) for item in (2, 3, 4)]
    await asyncio.sleep(0)
    assert flushes.groups == [[1]] and not any(task.done() for task in [first, *later])
    flushes.release.set()
    assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
    assert flushes.groups == [[1], [2, 3, 4]] and group.flushes == 2


async def test_a_failed_flush_fails_every_caller_in_it_and_the_next_one_runs() -> None:
    flushes = Flushes(fail=True)
    group = GroupCommit(flushes)
    callers = [asyncio.create_task(group.submit(item)) for item in (1, 2, 3)]
    await asyncio.sleep(0)
    flushes.release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert [str(outcome) for outcome in outcomes] == ["the transaction failed"] * 3
    assert flushes.groups == [[1, 2, 3]]
    flushes.fail = False
    assert await group.submit(5) == 50


async def test_concurrent_events_share_transactions_and_all_rows_are_kept(store: MonitorStore) -> None:
    core = core_of(store, Emitted())
    await core.set_reference(MODEL, 1)
    callers = 12
    await asyncio.gather(
        *(
            send(core, normal_rows(1, seed=seed), request_id=f"r{seed}", outputs=[1.0])
            for seed in range(callers)
        )
    )
    appender = core._appender(MODEL)
    assert appender.flushes < callers  # grouped: fewer transactions than events
    assert store.model_state(MODEL).seen == callers
    assert len(store.window(MODEL).rows) == callers
    joined = await asyncio.gather(*(core.record_labels(MODEL, f"r{seed}", [1.0]) for seed in range(callers)))
    assert core._joiner(MODEL).flushes < callers
    assert store.labelled(MODEL, 100).shape == (callers, 3) and joined.count(None) >= callers - 1


async def test_a_failed_transaction_fails_every_caller_and_keeps_none_of_their_rows(
    store: MonitorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = core_of(store, Emitted())
    await core.set_reference(MODEL, 1)

    def broken(*args: object, **kwargs: object) -> None:  # fails inside the transaction, after the inserts
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_remember", broken)
    outcomes = await asyncio.gather(
        *(send(core, normal_rows(2, seed=seed), request_id=f"r{seed}") for seed in range(5)),
        return_exceptions=True,
    )
    assert [str(outcome) for outcome in outcomes] == ["disk full"] * 5  # none acknowledged
    assert store.model_state(MODEL).seen == 0 and len(store.window(MODEL).rows) == 0  # rolled back
    monkeypatch.undo()
    await send(core, normal_rows(2, seed=9), request_id="after")  # the next transaction commits
    assert store.model_state(MODEL).seen == 2


def test_one_transaction_appends_batches_in_order_and_claims_one_evaluation(store: MonitorStore) -> None:
    store.install_reference(ReferenceInfo(MODEL, 2, "customers", "ds-v2", tuple(FEATURES), 10))
    rows = [normal_rows(8, seed=seed) for seed in range(4)]
    batches = [
        PredictionBatch(rows[0], np.zeros(8), model_version=2, remember=("chunked", 100)),
        PredictionBatch(rows[1], np.ones(8), model_version=1, remember=("old", 100)),  # not the champion
        PredictionBatch(rows[2], np.ones(8), model_version=2, remember=("chunked", 100)),  # its second chunk
        PredictionBatch(rows[3], np.ones(8), model_version=2, remember=("other", 100)),
    ]
    appended = store.append_windows(MODEL, batches, window_size=20, evaluate_every=10, at=1.0)
    assert [a.counted for a in appended] == [True, False, True, True]
    assert [a.seen for a in appended] == [8, 8, 16, 24]
    # Due at the third batch (16 rows pending), claimed there; the fourth's 8 rows are pending.
    assert [a.due is not None for a in appended] == [False, False, True, False]
    due = appended[2].due
    assert due is not None and np.array_equal(due.rows, np.concatenate([rows[0], rows[2], rows[3]])[-20:])
    assert store.model_state(MODEL).pending == 8 and all(a.champion == 2 for a in appended)

    truth = np.concatenate([np.zeros(8), np.ones(8)])
    joins = store.join_labels_many(
        MODEL,
        [
            LabelBatch("chunked", truth),  # both chunks, in order
            LabelBatch("old", np.ones(8)),  # never remembered
            LabelBatch("other", np.ones(3)),  # wrong count: stays remembered
            LabelBatch("chunked", truth),  # redelivered in the same transaction: joined once
        ],
        min_labels=16,
        keep=100,
        counts=True,
    )
    assert [(j.rows, j.joined, j.due) for j in joins] == [
        (16, True, True),
        (0, False, False),
        (8, False, False),
        (0, False, False),
    ]
    labelled = store.labelled(MODEL, 100)
    assert np.array_equal(labelled[:, 0], truth) and np.array_equal(labelled[:, 1], truth)
    assert store.join_labels(MODEL, "other", np.ones(8), min_labels=16, keep=100, counts=True).joined


async def test_labels_join_while_a_drift_evaluation_waits(store: MonitorStore) -> None:
    released, emitting = asyncio.Event(), asyncio.Event()

    class SlowTopic(Emitted):
        async def __call__(self, event: DriftDetected) -> None:
            emitting.set()
            await released.wait()  # the evaluation holds here, as on a slow broker
            await super().__call__(event)

    emitted = SlowTopic()
    core = core_of(store, emitted, trigger_after=1, min_labels=1, decay_threshold=1.0)
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(2, seed=1), request_id="labelled", outputs=[1.0, 0.0])
    evaluation = asyncio.create_task(send(core, normal_rows(EVERY, shift=3.0, seed=2)))

    await asyncio.wait_for(emitting.wait(), 60)
    performance = await asyncio.wait_for(core.record_labels(MODEL, "labelled", [1.0, 1.0]), 30)
    assert performance is not None and performance.labelled_rows == 2 and performance.value == 0.5
    assert core._evaluation_lock(MODEL).locked() and not evaluation.done() and not emitted
    released.set()
    await evaluation
    assert len(emitted) == 1


def test_a_chunk_of_another_width_starts_its_request_again(store: MonitorStore) -> None:
    """Rows of one request of two widths cannot be labelled as one: the newer chunk replaces it."""
    wide, narrow = normal_rows(3, seed=1), normal_rows(2, seed=2)[:, :2]
    store.append_window(
        MODEL, None, wide, np.ones(3), None, window_size=20, evaluate_every=100, at=1.0, remember=("r", 10)
    )
    store.append_window(
        MODEL, None, narrow, np.zeros(2), None, window_size=20, evaluate_every=100, at=2.0, remember=("r", 10)
    )
    assert not store.join_labels(MODEL, "r", np.ones(5), min_labels=100, keep=10, counts=True).joined
    assert store.join_labels(MODEL, "r", np.zeros(2), min_labels=100, keep=10, counts=True).joined
    assert np.array_equal(store.labelled(MODEL, 10)[:, 0], np.zeros(2))
