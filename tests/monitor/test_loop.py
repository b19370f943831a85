"""The monitor's side of the loop, in-process: prediction drift against the champion's own
outputs, one window per served version, time windows, labels and decay, the CBPE-like estimate,
hysteresis and cooldown before *drift detected*, what the event asks for (feedback, retrain or
nothing: no new data), and the history."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from cascade.errors import NotFound
from cascade.events import DriftDetected
from cascade.services.monitor.core import DriftPolicy, MonitorCore, Reference, Window
from cascade.services.monitor.grpc_api import history_message, report_message
from cascade.services.monitor.store import MonitorStore, ReferenceInfo

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


class Champion:
    """The champion's outputs on the reference rows: class 1 when the first feature is positive."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def outputs(self, model: str, model_version: int, rows: np.ndarray) -> np.ndarray:
        self.calls.append((model, model_version))
        return (rows[:, 0] > 0).astype(np.float64)


class Data:
    """Ingest as the loop sees it: maybe a newer dataset version; feedback batches it received."""

    def __init__(self, newer: str | None = None) -> None:
        self.newer = newer
        self.batches: list[tuple[str, list[str], np.ndarray, np.ndarray, str]] = []

    async def newer_version(self, dataset: str, dataset_version: str) -> str | None:
        return self.newer

    async def send_feedback(
        self, dataset: str, features: Sequence[str], rows: np.ndarray, labels: np.ndarray, source: str
    ) -> str:
        self.batches.append((dataset, list(features), rows, labels, source))
        return "f" * 64


class Emitted(list[DriftDetected]):
    async def __call__(self, event: DriftDetected) -> None:
        self.append(event)


def core_of(store: MonitorStore, emitted: Emitted, data: Data | None = None, **policy: object) -> MonitorCore:
    return MonitorCore(
        store,
        Source(),
        window_size=40,
        evaluate_every=EVERY,
        p_value_threshold=0.05,
        policy=DriftPolicy(**{"calibration_draws": 50, **policy}),  # type: ignore[arg-type]
        emit=emitted,
        champion_outputs=Champion(),
        retrain_data=data,
    )


async def send(
    core: MonitorCore,
    rows: np.ndarray,
    request_id: str = "",
    outputs: list[float] | None = None,
    version: int | None = None,
) -> None:
    predicted = outputs if outputs is not None else (rows[:, 0] > 0).astype(float).tolist()
    await core.record_predictions(
        MODEL, FEATURES, rows.tolist(), predicted, request_id, model_version=version
    )


async def test_the_prediction_is_tested_against_the_champions_own_outputs(store: MonitorStore) -> None:
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
    assert {f["test"] for f in event.report["features"]} == {"ks_calibrated"}
    assert not any("distribution" in f for f in event.report["features"])  # those are for the page
    assert "false alarms at most 1.00% of reports" in event.summary

    for seed in range(4, 10):  # still drifting: the cooldown holds
        await send(core, normal_rows(EVERY, shift=3.0, seed=seed))
    assert len(emitted) == 1
    verdicts, events = core.history(MODEL)
    # The held-back decision is recorded once (not once per drifted report), newest first.
    held, sent = events
    assert sent.event_id == event.id and sent.emitted and len(verdicts) == 8
    assert sent.triggered == "retrain requested from the trainer"  # no ingest to ask: the trainer checks
    assert not held.emitted and held.kind == "drift" and held.model_version == 1
    assert held.triggered.startswith("none: within the 3600s cooldown after the event of ")
    assert held.triggered.endswith("; not emitted")
    assert store.drift_events(MODEL, emitted_only=True) == [sent]


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
    await send(core, normal_rows(EVERY, shift=3.0, seed=3))
    # The decision is recorded, saying it triggered nothing and why; once, not per report.
    [held] = store.drift_events(MODEL)
    assert not held.emitted and held.kind == "drift" and "4 of 4 features drifted" in held.summary
    assert held.triggered == (
        "none: churn is not retrained automatically (retrain_models is 'other*'); not emitted"
    )
    assert not store.drift_events(MODEL, emitted_only=True)


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
    core = core_of(
        store, Emitted(), drift_mode="evidently", feature_tests={"beta": "psi", "prediction": "chisquare"}
    )
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
    assert not history.drift_events[0].held_back
    assert history.drift_events[0].triggered == "retrain requested from the trainer"
    # The history carries every feature's test at the time, and the prediction's; no distributions.
    [verdict] = history.verdicts
    assert [f.feature for f in verdict.features] == FEATURES and verdict.prediction.test == "z"
    assert all(f.drifted and f.statistic > f.threshold for f in verdict.features)
    assert not any(f.reference_frequencies or f.bin_edges for f in verdict.features)
    # The report carries each column's distributions.
    assert all(len(f.bin_edges) == len(f.reference_frequencies) + 1 for f in message.features)
    assert list(message.prediction.categories) == ["0", "1"]


async def test_the_cooldown_survives_a_restart(store: MonitorStore) -> None:
    emitted = Emitted()
    core = core_of(store, emitted, trigger_after=1, cooldown_seconds=3600)
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, shift=3.0, seed=2))
    assert len(emitted) == 1

    restarted = core_of(store, emitted, trigger_after=1, cooldown_seconds=3600)
    await send(restarted, normal_rows(EVERY, shift=3.0, seed=3))
    assert restarted.latest_report(MODEL).dataset_drifted and len(emitted) == 1


class RegressionSource:
    """A regressor's reference: its labels are noisy, its own predictions are much narrower."""

    def __init__(self) -> None:
        self.rows = normal_rows(500, seed=1)
        noise = np.random.default_rng(2).normal(scale=2.0, size=len(self.rows))
        self.target = self.rows[:, 0] + noise

    async def fetch(self, model: str, model_version: int) -> Reference:
        info = ReferenceInfo(model, model_version, DATASET, "ds-v1", tuple(FEATURES), len(self.rows))
        return Reference(info, self.rows, self.target, "regression", {"holdout_r2": 0.2})


class Regressor:
    async def outputs(self, model: str, model_version: int, rows: np.ndarray) -> np.ndarray:
        return rows[:, 0].copy()


async def test_a_regressors_own_rows_are_no_prediction_drift(store: MonitorStore) -> None:
    """Against the labels, the narrow predictions of the model's own rows would drift forever."""
    core = MonitorCore(store, RegressionSource(), 200, 200, 0.05, DriftPolicy(), champion_outputs=Regressor())
    await core.set_reference(MODEL, 1)
    own = normal_rows(200, seed=1)  # the reference rows themselves, predicted by the champion
    report = await core.record_predictions(MODEL, FEATURES, own.tolist(), own[:, 0].tolist())
    assert report is not None and report.prediction is not None
    assert report.prediction.test == "ks" and not report.prediction.drifted


async def test_without_the_champions_outputs_there_is_no_prediction_test(store: MonitorStore) -> None:
    core = MonitorCore(store, Source(), 40, EVERY, 0.05, DriftPolicy())
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, seed=2))
    assert core.latest_report(MODEL).prediction is None  # never the labels


async def test_rows_of_other_versions_are_not_counted_against_the_champion(store: MonitorStore) -> None:
    core = core_of(store, Emitted())
    await core.set_reference(MODEL, 2)
    for seed in range(3):  # pinned to v1, and shifted: would drift if counted
        await send(core, normal_rows(EVERY, shift=3.0, seed=seed), version=1)
    with pytest.raises(NotFound):
        core.latest_report(MODEL)
    await send(core, normal_rows(EVERY, seed=9), version=2)
    report = core.latest_report(MODEL)
    assert report.model_version == 2 and report.window_size == EVERY and report.predictions_seen == EVERY
    assert not report.dataset_drifted


async def test_a_new_champion_starts_a_fresh_window(store: MonitorStore) -> None:
    core = core_of(store, Emitted())
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY + 5, shift=3.0, seed=2), version=1)
    assert core.latest_report(MODEL).dataset_drifted
    await core.set_reference(MODEL, 2)
    await send(core, normal_rows(EVERY - 1, seed=3), version=2)
    assert core.latest_report(MODEL).model_version == 1  # v1's 5 rows past the report are gone
    await send(core, normal_rows(1, seed=4), version=2)
    report = core.latest_report(MODEL)
    assert report.model_version == 2 and report.window_size == EVERY and not report.dataset_drifted


async def test_rows_before_the_reference_count_only_if_the_champion_answered(store: MonitorStore) -> None:
    core = core_of(store, Emitted())
    await send(core, normal_rows(EVERY, shift=3.0, seed=2), version=1)
    await send(core, normal_rows(EVERY - 2, seed=3), version=2)  # v2 answers now: v1's rows go
    report = await core.set_reference(MODEL, 2)
    assert report is None  # 18 rows: not due yet
    await send(core, normal_rows(2, seed=4), version=2)
    assert core.latest_report(MODEL).window_size == EVERY


async def test_drift_without_new_data_is_reported_and_asks_for_no_retrain(store: MonitorStore) -> None:
    emitted, data = Emitted(), Data(newer=None)
    core = core_of(store, emitted, data, trigger_after=1)
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, shift=3.0, seed=2))
    [event] = emitted
    assert event.action == "no_new_data" and "drift detected; no new data to learn from" in event.summary
    assert not data.batches
    [record] = store.drift_events(MODEL)
    assert "no new data" in record.summary and record.emitted
    assert record.triggered.startswith("none: no new data to learn from (the champion was trained on ")
    assert record.triggered.endswith("(the trainer makes no version)")


async def test_a_newer_dataset_version_asks_for_a_retrain(store: MonitorStore) -> None:
    emitted = Emitted()
    core = core_of(store, emitted, Data(newer="n" * 64), trigger_after=1)
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY, shift=3.0, seed=2))
    assert [event.action for event in emitted] == ["retrain"] and "n" * 12 in emitted[0].summary
    [record] = store.drift_events(MODEL)
    assert record.triggered == (
        f"retrain requested from the trainer: retraining on {DATASET}@{'n' * 12}, newer than {DATASET}@ds-v1"
    )


async def test_labelled_production_rows_go_to_ingest_as_a_feedback_batch(store: MonitorStore) -> None:
    emitted, data = Emitted(), Data(newer=None)
    core = core_of(store, emitted, data, trigger_after=1, feedback_min_rows=EVERY, cooldown_seconds=0)
    await core.set_reference(MODEL, 1)
    rows = normal_rows(EVERY, shift=3.0, seed=2)
    await send(core, rows, request_id="r1")
    assert [event.action for event in emitted] == ["no_new_data"]  # no labels yet
    labels = (rows[:, 1] > 3.0).astype(np.float64)
    await core.record_labels(MODEL, "r1", labels.tolist())

    await send(core, normal_rows(EVERY, shift=3.0, seed=3))
    assert [event.action for event in emitted] == ["no_new_data", "feedback"]
    [(dataset, features, sent_rows, sent_labels, source)] = data.batches
    assert (dataset, features) == (DATASET, FEATURES)
    np.testing.assert_array_equal(sent_rows, rows)
    np.testing.assert_array_equal(sent_labels, labels)
    assert source.startswith("feedback:") and emitted[1].id in source
    feedback = store.drift_events(MODEL)[0]
    assert feedback.event_id == emitted[1].id
    assert feedback.triggered == (
        f"feedback batch: {EVERY} labelled production rows sent to ingest as a feedback batch "
        f"({DATASET}@{'f' * 12}), whose new version retrains"
    )

    await send(core, normal_rows(EVERY, shift=3.0, seed=4))  # those rows were sent: none are left
    assert [event.action for event in emitted] == ["no_new_data", "feedback", "no_new_data"]


async def test_answers_of_a_new_champion_before_its_promotion_arrives_count_for_it(
    store: MonitorStore,
) -> None:
    core = core_of(store, Emitted())
    await core.set_reference(MODEL, 1)
    await send(core, normal_rows(EVERY - 5, seed=2), version=2)  # serving swapped first
    with pytest.raises(NotFound):
        core.latest_report(MODEL)
    await core.set_reference(MODEL, 2)
    await send(core, normal_rows(5, seed=3), version=2)
    report = core.latest_report(MODEL)
    assert report.model_version == 2 and report.window_size == EVERY and report.predictions_seen == EVERY
