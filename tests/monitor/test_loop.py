"""The monitor's side of the loop, in-process: prediction drift, time windows, labels and decay,
the CBPE-like estimate, hysteresis and cooldown before *drift detected*, and the history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.monitor.core import DriftPolicy, MonitorCore, Reference, Window
from services.monitor.grpc_api import history_message, report_message
from services.monitor.store import MonitorStore, ReferenceInfo
from shared.events import DriftDetected

from .support import DATASET, FEATURES, normal_rows

MODEL = "churn"
EVERY = 20


class Source:
    def __init__(self) -> None:
        self.rows = normal_rows(500, seed=1)

    async def fetch(self, model: str, model_version: int) -> Reference:
        info = ReferenceInfo(
            model, model_version, DATASET, f"ds-v{model_version}", tuple(FEATURES), len(self.rows)
        )
        target = (self.rows[:, 0] > 0).astype(np.float64)
        return Reference(info, self.rows, target, "classification", {"holdout_accuracy": 0.95})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MonitorStore]:
    store = MonitorStore(tmp_path)
    yield store
    store.close()


class Emitted(list[DriftDetected]):
    async def __call__(self, event: DriftDetected) -> None:
        self.append(event)


def core_of(store: MonitorStore, emitted: Emitted, **policy: object) -> MonitorCore:
    return MonitorCore(
        store,
        Source(),
        window_size=40,
        evaluate_every=EVERY,
        p_value_threshold=0.05,
        policy=DriftPolicy(**policy),  # type: ignore[arg-type]
        emit=emitted,
    )


async def send(
    core: MonitorCore, rows: np.ndarray, request_id: str = "", outputs: list[float] | None = None
) -> None:
    predicted = outputs if outputs is not None else (rows[:, 0] > 0).astype(float).tolist()
    await core.record_predictions(MODEL, FEATURES, rows.tolist(), predicted, request_id)


async def test_the_prediction_is_tested_against_the_training_labels(store: MonitorStore) -> None:
    core = core_of(store, Emitted())
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, seed=2))
    report = core.latest_report(MODEL)
    assert report.prediction is not None and report.prediction.test == "z"  # a binary output
    assert not report.prediction.drifted

    await send(core, normal_rows(2 * EVERY, seed=3), outputs=[1.0] * 2 * EVERY)  # always the same class
    assert core.latest_report(MODEL).prediction.drifted  # type: ignore[union-attr]


async def test_two_drifted_reports_in_a_row_emit_once_then_the_cooldown_holds(store: MonitorStore) -> None:
    emitted = Emitted()
    core = core_of(store, emitted, trigger_after=2, cooldown_seconds=3600)
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, shift=3.0, seed=2))
    assert core.latest_report(MODEL).dataset_drifted and not emitted  # hysteresis: one is not enough
    await send(core, normal_rows(EVERY, shift=3.0, seed=3))
    assert len(emitted) == 1
    event = emitted[0]
    assert (event.model, event.model_version, event.kind) == (MODEL, 1, "drift")
    assert set(event.drifted_features) == set(FEATURES)
    assert {f["test"] for f in event.report["features"]} == {"ks"}

    for seed in range(4, 10):  # still drifting: the cooldown holds
        await send(core, normal_rows(EVERY, shift=3.0, seed=seed))
    assert len(emitted) == 1
    verdicts, events = core.history(MODEL)
    assert [e.event_id for e in events] == [event.id] and len(verdicts) == 8


async def test_a_calm_report_resets_the_hysteresis(store: MonitorStore) -> None:
    emitted = Emitted()
    core = core_of(store, emitted, trigger_after=2, cooldown_seconds=0)
    core.window_size = EVERY  # each report sees only the latest batch
    await core.set_reference(MODEL, 1)
    for shift in (3.0, 0.0, 3.0, 0.0, 3.0):
        await send(core, normal_rows(EVERY, shift=shift, seed=int(shift * 10) + len(emitted)))
    assert not emitted
    await send(core, normal_rows(EVERY, shift=3.0, seed=99))
    assert len(emitted) == 1


async def test_models_outside_the_retrain_glob_are_reported_but_not_retrained(store: MonitorStore) -> None:
    emitted = Emitted()
    core = core_of(store, emitted, trigger_after=1, retrain_models="other*")
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, shift=3.0, seed=2))
    assert core.latest_report(MODEL).dataset_drifted and not emitted


async def test_labels_join_on_the_request_id_and_decay_emits(store: MonitorStore) -> None:
    emitted = Emitted()
    core = core_of(store, emitted, min_labels=10, decay_threshold=0.1, trigger_after=100)
    await core.set_reference(MODEL, 1)
    rows = normal_rows(EVERY, seed=2)
    predicted = (rows[:, 0] > 0).astype(float)
    await send(core, rows, request_id="good", outputs=predicted.tolist())
    performance = await core.record_labels(MODEL, "good", predicted.tolist())  # all right
    assert performance is not None and performance.value == 1.0 and not performance.decayed
    assert performance.champion_value == 0.95 and performance.estimated_accuracy is None
    assert "unavailable" in performance.estimate_note
    assert core.latest_report(MODEL).performance == performance
    assert await core.record_labels(MODEL, "unknown", [1.0]) is None

    await send(core, rows, request_id="bad", outputs=predicted.tolist())
    performance = await core.record_labels(MODEL, "bad", (1 - predicted).tolist())  # all wrong
    assert performance is not None and performance.value == 0.5 and performance.decayed
    assert [event.kind for event in emitted] == ["decay"]


async def test_probabilities_give_an_estimate_labelled_as_such(store: MonitorStore) -> None:
    core = core_of(store, Emitted())
    await core.set_reference(MODEL, 1)
    rows = normal_rows(EVERY, seed=2)
    probabilities = [[0.9, 0.1]] * (EVERY // 2) + [[0.3, 0.7]] * (EVERY // 2)
    await core.record_predictions(MODEL, FEATURES, rows.tolist(), [0.0] * EVERY, "r", probabilities)
    performance = core.latest_report(MODEL).performance
    assert performance is not None and performance.estimated_accuracy == pytest.approx(0.8)
    assert performance.estimate_note.startswith("estimate (CBPE-like)")


def test_a_time_window_keeps_only_recent_rows() -> None:
    window = Window(size=10, width=1)
    window.append(np.array([[1.0], [2.0]]), at=100.0)
    window.append(np.array([[3.0]]), np.array([1.0]), at=200.0)
    assert window.rows().ravel().tolist() == [1, 2, 3]
    assert window.rows(since=150.0).ravel().tolist() == [3]
    assert window.outputs(since=150.0).tolist() == [1.0]


async def test_a_test_can_be_chosen_per_feature(store: MonitorStore) -> None:
    core = core_of(store, Emitted(), feature_tests={"beta": "psi", "prediction": "chisquare"})
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, seed=2))
    report = core.latest_report(MODEL)
    assert [f.test for f in report.features] == ["ks", "psi", "ks", "ks"]
    assert report.prediction is not None and report.prediction.test == "chisquare"
    with pytest.raises(ValueError, match="unknown drift test"):
        DriftPolicy(feature_tests={"beta": "t-test"})


async def test_reports_and_history_convert_to_protobuf(store: MonitorStore) -> None:
    emitted = Emitted()
    core = core_of(store, emitted, trigger_after=1, min_labels=EVERY)
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, shift=3.0, seed=2), request_id="a")
    await core.record_labels(MODEL, "a", [1.0] * EVERY)
    message = report_message(core.latest_report(MODEL))
    assert message.prediction.test == "z" and message.performance.metric == "accuracy"
    assert message.performance.HasField("value") and not message.performance.HasField("estimated_accuracy")
    history = history_message(MODEL, *core.history(MODEL))
    assert history.verdicts[0].dataset_drifted and history.drift_events[0].event_id == emitted[0].id


async def test_the_cooldown_survives_a_restart(store: MonitorStore) -> None:
    emitted = Emitted()
    core = core_of(store, emitted, trigger_after=1, cooldown_seconds=3600)
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, shift=3.0, seed=2))
    assert len(emitted) == 1

    restarted = core_of(store, emitted, trigger_after=1, cooldown_seconds=3600)
    await send(restarted, normal_rows(EVERY, shift=3.0, seed=3))
    assert restarted.latest_report(MODEL).dataset_drifted and len(emitted) == 1
