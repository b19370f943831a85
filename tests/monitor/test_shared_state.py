"""Two monitor replicas on one database, and a restarted one, see the same window, drift streak,
cooldown and label joins: they live in the store, not in a replica's memory. On SQLite and on the
suite's PostgreSQL (pgserver); each replica has its own store (its own engine), as two processes."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from cascade.database import sqlite_url
from cascade.services.monitor.core import MonitorCore
from cascade.services.monitor.store import DriftReport, MonitorStore
from tests.databases import database_url_for

from .support import FEATURES, normal_rows
from .test_loop import EVERY, MODEL, Data, Emitted, core_of, send


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(request, "monitor_shared", sqlite_url(tmp_path / "monitor.sqlite3"))


@pytest.fixture
def stores(tmp_path: Path, database_url: str) -> Iterator[list[MonitorStore]]:
    """Two stores on one database: one per replica."""
    opened = [MonitorStore(tmp_path, database_url) for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


async def test_one_window_and_one_streak_across_two_replicas_and_one_event(
    stores: list[MonitorStore],
) -> None:
    emitted = Emitted()  # both replicas publish to the same topic
    first, second = (core_of(store, emitted, trigger_after=2, cooldown_seconds=3600) for store in stores)
    await first.set_reference(MODEL, 1)  # the promotion reaches one replica only

    # Half a batch each: neither alone reaches EVERY rows, together they do.
    await send(first, normal_rows(EVERY // 2, shift=3.0, seed=2))
    await send(second, normal_rows(EVERY // 2, shift=3.0, seed=3))
    report = second.latest_report(MODEL)
    assert report.window_size == EVERY and report.predictions_seen == EVERY and report.dataset_drifted
    assert not emitted  # a streak of one

    await send(second, normal_rows(EVERY // 2, shift=3.0, seed=4))
    await send(first, normal_rows(EVERY // 2, shift=3.0, seed=5))  # the streak's second report
    assert len(emitted) == 1 and emitted[0].model_version == 1
    assert "in 2 reports in a row" in emitted[0].summary

    for seed in range(6, 12):  # still drifting, on both replicas: the shared cooldown holds
        await send((first, second)[seed % 2], normal_rows(EVERY, shift=3.0, seed=seed))
    assert len(emitted) == 1
    assert len(stores[0].drift_events(MODEL, emitted_only=True)) == 1
    # The decision held back is recorded once, though both replicas held it back.
    assert [event.emitted for event in stores[0].drift_events(MODEL)] == [False, True]
    assert stores[1].window(MODEL).rows.shape == (40, len(FEATURES))  # trimmed to the window size
    assert stores[0].verdicts(MODEL)[0].predictions_seen == 8 * EVERY


async def test_only_one_of_two_replicas_claims_the_cooldown(stores: list[MonitorStore]) -> None:
    assert stores[0].claim_emission(MODEL, now=1000.0, cooldown=60) == (True, None)
    assert stores[1].claim_emission(MODEL, now=1001.0, cooldown=60) == (False, 1000.0)
    stores[0].release_emission(MODEL, claimed=1000.0, previous=None)  # its event failed to go out
    assert stores[1].claim_emission(MODEL, now=1002.0, cooldown=60) == (True, None)
    assert stores[0].model_state(MODEL).last_emitted == 1002.0


def test_replicas_claiming_at_once_claim_once(stores: list[MonitorStore]) -> None:
    """Real concurrency: threads on two engines race for the same cooldown; one wins."""
    claims: list[bool] = []
    barrier = threading.Barrier(8)

    def claim(store: MonitorStore) -> None:
        barrier.wait()
        claims.append(store.claim_emission(MODEL, now=time.time(), cooldown=3600)[0])

    threads = [threading.Thread(target=claim, args=(stores[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == [False] * 7 + [True]


async def test_labels_recorded_by_one_replica_join_predictions_logged_by_the_other(
    stores: list[MonitorStore],
) -> None:
    emitted, data = Emitted(), Data()
    first, second = (
        core_of(
            store, emitted, data, min_labels=10, decay_threshold=0.1, trigger_after=100, feedback_min_rows=20
        )
        for store in stores
    )
    await first.set_reference(MODEL, 1)
    rows = normal_rows(EVERY, seed=2)
    predicted = (rows[:, 0] > 0).astype(float)
    await send(first, rows[:5], request_id="chunked", outputs=predicted[:5].tolist())
    await send(second, rows[5:], request_id="chunked", outputs=predicted[5:].tolist())  # the rest of it

    performance = await second.record_labels(MODEL, "chunked", predicted.tolist())
    assert performance is not None and performance.value == 1.0 and performance.labelled_rows == EVERY
    assert await first.record_labels(MODEL, "chunked", predicted.tolist()) is None  # joined once

    await send(second, rows, request_id="wrong", outputs=predicted.tolist())
    performance = await first.record_labels(MODEL, "wrong", (1 - predicted).tolist())
    assert performance is not None and performance.value == 0.5 and performance.decayed
    [event] = emitted
    assert event.kind == "decay" and event.action == "feedback"
    [(_, _, inputs, labels, _)] = data.batches  # labelled on both replicas, sent once
    assert np.array_equal(inputs, np.concatenate([rows, rows]))
    assert np.array_equal(labels, np.concatenate([predicted, 1 - predicted]))


async def test_remembered_requests_are_bounded_oldest_dropped(stores: list[MonitorStore]) -> None:
    first, second = (core_of(store, Emitted(), remembered_requests=2) for store in stores)
    await first.set_reference(MODEL, 1)
    for request in ("a", "b", "c"):
        await send(first, normal_rows(1, seed=len(request)), request_id=request, outputs=[1.0])
    assert await second.record_labels(MODEL, "a", [1.0]) is None  # dropped: the oldest
    assert second.store.join_labels(MODEL, "c", np.ones(1), min_labels=1, keep=5, counts=True).joined


async def test_a_restarted_replica_resumes_the_window_and_the_streak(
    tmp_path: Path, database_url: str
) -> None:
    emitted = Emitted()
    store = MonitorStore(tmp_path, database_url)
    before = core_of(store, emitted, trigger_after=2)
    await before.set_reference(MODEL, 1)
    await send(before, normal_rows(EVERY, shift=3.0, seed=2))
    await send(before, normal_rows(EVERY // 2, shift=3.0, seed=3))  # pending, not evaluated yet
    store.close()

    store = MonitorStore(tmp_path, database_url)
    after: MonitorCore = core_of(store, emitted, trigger_after=2)  # empty memory
    assert not emitted and store.model_state(MODEL).consecutive_drifted == 1
    await send(after, normal_rows(EVERY // 2, shift=3.0, seed=4))
    report = after.latest_report(MODEL)
    assert report.window_size == 2 * EVERY and report.predictions_seen == 2 * EVERY
    assert len(emitted) == 1  # the streak of the first life counted
    store.close()


async def test_a_promotion_on_one_replica_gives_the_other_the_new_champion(
    stores: list[MonitorStore],
) -> None:
    first, second = (core_of(store, Emitted()) for store in stores)
    await first.set_reference(MODEL, 1)
    await send(second, normal_rows(EVERY // 2, seed=2), version=1)
    await first.set_reference(MODEL, 2)  # a fresh window for v2
    await send(second, normal_rows(EVERY, seed=3), version=2)
    report = first.latest_report(MODEL)
    assert (report.model_version, report.window_size) == (2, EVERY)
    assert second.known_task(MODEL) == "classification"


async def test_a_store_from_before_shared_state_keeps_its_cooldown_and_count(
    stores: list[MonitorStore],
) -> None:
    store, emitted = stores[0], Emitted()
    store.save_report(dataclasses.replace(_any_report(), predictions_seen=50))
    store.save_drift_event(MODEL, "earlier", "drift", 1, "drifted", datetime.now(UTC))  # no state row yet
    core = core_of(store, emitted, trigger_after=1, cooldown_seconds=3600)
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, shift=3.0, seed=2))
    report = core.latest_report(MODEL)
    assert report.dataset_drifted and report.predictions_seen == 50 + EVERY
    assert not emitted  # within the cooldown of the event the older monitor emitted


def _any_report() -> DriftReport:
    return DriftReport(MODEL, 1, "customers", "ds-v1", 0, (), False, datetime.now(UTC), 0)


async def test_a_report_on_a_replaced_champion_is_dropped(stores: list[MonitorStore]) -> None:
    first, second = (core_of(store, Emitted()) for store in stores)
    await first.set_reference(MODEL, 1)
    stale = dataclasses.replace(_any_report(), model_version=1, dataset_drifted=True)
    await second.set_reference(MODEL, 2)  # while the first replica evaluates v1's window
    assert stores[0].save_verdict(stale) is None
    assert stores[0].latest_report(MODEL) is None and stores[0].model_state(MODEL).consecutive_drifted == 0
    assert stores[0].save_verdict(dataclasses.replace(stale, model_version=2)) == 1
