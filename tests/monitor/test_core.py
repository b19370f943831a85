from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from cascade.errors import InvalidArgument, NotFound
from cascade.services.monitor.core import DriftPolicy, MonitorCore, Reference, Unmonitored, Window
from cascade.services.monitor.store import MonitorStore, ReferenceInfo

from .support import DATASET, FEATURES, normal_rows

EVERY = 10
WINDOW = 20


class FakeSource:
    """Serves reference data from memory and counts the fetches."""

    def __init__(self) -> None:
        self.rows = {1: normal_rows(500, seed=1), 2: normal_rows(500, seed=5)}
        self.fetches: list[tuple[str, int]] = []

    async def fetch(self, model: str, model_version: int) -> Reference:
        self.fetches.append((model, model_version))
        rows = self.rows[model_version]
        info = ReferenceInfo(
            model, model_version, DATASET, f"ds-v{model_version}", tuple(FEATURES), len(rows)
        )
        return Reference(info, rows)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MonitorStore]:
    store = MonitorStore(tmp_path)
    yield store
    store.close()


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


def core_of(store: MonitorStore, source: FakeSource, **policy: object) -> MonitorCore:
    return MonitorCore(
        store,
        source,
        window_size=WINDOW,
        evaluate_every=EVERY,
        p_value_threshold=0.05,
        policy=DriftPolicy(calibration_draws=50, **policy),  # type: ignore[arg-type]
    )


def rows_list(rows: np.ndarray) -> list[list[float]]:
    return rows.tolist()  # type: ignore[no-any-return]


# -- the window ------------------------------------------------------------------------------------
def test_window_keeps_the_latest_rows_oldest_first() -> None:
    window = Window(size=4, width=1)
    window.append(np.array([[1.0], [2.0], [3.0]]))
    assert window.rows().ravel().tolist() == [1, 2, 3]

    window.append(np.array([[4.0], [5.0]]))
    assert len(window) == 4
    assert window.rows().ravel().tolist() == [2, 3, 4, 5]

    window.append(np.arange(10.0, 17.0).reshape(-1, 1))  # larger than the window
    assert window.rows().ravel().tolist() == [13, 14, 15, 16]


def test_window_rows_are_a_copy() -> None:
    window = Window(size=2, width=1)
    window.append(np.array([[1.0]]))
    window.rows()[0, 0] = 99.0
    assert window.rows().ravel().tolist() == [1]


# -- cadence and content ---------------------------------------------------------------------------
async def test_evaluates_every_n_new_rows_once_a_reference_exists(
    store: MonitorStore, source: FakeSource
) -> None:
    core = core_of(store, source)
    await core.set_reference("churn", 1)

    assert await core.record_predictions("churn", FEATURES, rows_list(normal_rows(EVERY - 1, seed=2))) is None
    first = await core.record_predictions("churn", FEATURES, rows_list(normal_rows(1, seed=3)))
    assert first is not None and first.window_size == EVERY and first.predictions_seen == EVERY

    assert await core.record_predictions("churn", FEATURES, rows_list(normal_rows(EVERY - 1, seed=4))) is None
    second = await core.record_predictions("churn", FEATURES, rows_list(normal_rows(EVERY + 5, seed=5)))
    assert second is not None
    assert second.window_size == WINDOW  # the window is full: only the latest rows count
    assert second.predictions_seen == (EVERY - 1) + 1 + (EVERY - 1) + (EVERY + 5)
    assert store.latest_report("churn") == second
    assert len(store.verdicts("churn")) == 2


async def test_report_content(store: MonitorStore, source: FakeSource) -> None:
    core = core_of(store, source)
    await core.set_reference("churn", 1)
    shifted = normal_rows(WINDOW, seed=2)
    shifted[:, :3] += 3.0  # three of four features move far away

    report = await core.record_predictions("churn", FEATURES, rows_list(shifted))

    assert report is not None
    assert (report.model, report.model_version) == ("churn", 1)
    assert (report.reference_dataset, report.reference_dataset_version) == (DATASET, "ds-v1")
    assert [feature.feature for feature in report.features] == FEATURES
    assert [feature.drifted for feature in report.features] == [True, True, True, False]
    # Calibrated for the window's size: KS D against a threshold in D's own units, below 1.
    assert all(feature.test == "ks_calibrated" and 0 < feature.threshold < 1 for feature in report.features)
    assert all((f.statistic > f.threshold) == f.drifted for f in report.features)
    assert report.dataset_drifted
    assert report.computed_at.tzinfo is not None
    assert core.latest_report("churn") == report


async def test_drift_metrics_follow_the_latest_report(store: MonitorStore, source: FakeSource) -> None:
    core = core_of(store, source)
    await core.set_reference("metrics-model", 1)
    shifted = normal_rows(WINDOW, seed=2) + 3.0
    report = await core.record_predictions("metrics-model", FEATURES, rows_list(shifted))
    assert report is not None

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"model": "metrics-model", **labels})

    assert sample("cascade_monitor_dataset_drifted") == 1.0
    assert sample("cascade_monitor_feature_drift_statistic", feature="alpha") == report.features[0].statistic
    assert sample("cascade_monitor_predictions_total") == WINDOW


async def test_predictions_before_the_reference_fill_the_window(
    store: MonitorStore, source: FakeSource
) -> None:
    core = core_of(store, source)
    assert await core.record_predictions("churn", FEATURES, rows_list(normal_rows(EVERY + 2, seed=2))) is None
    assert store.latest_report("churn") is None

    report = await core.set_reference("churn", 1)  # due already: evaluated at once

    assert report is not None and report.window_size == EVERY + 2


async def test_a_repeated_promotion_is_harmless(store: MonitorStore, source: FakeSource) -> None:
    core = core_of(store, source)
    await core.set_reference("churn", 1)
    await core.set_reference("churn", 1)
    assert source.fetches == [("churn", 1)]

    await core.set_reference("churn", 2)
    await core.set_reference("churn", 1)  # a rollback is a change too
    assert source.fetches == [("churn", 1), ("churn", 2), ("churn", 1)]
    assert store.reference("churn") == ReferenceInfo("churn", 1, DATASET, "ds-v1", tuple(FEATURES), 500)


async def test_a_restart_restores_the_reference_and_the_count(
    store: MonitorStore, source: FakeSource
) -> None:
    before = core_of(store, source)
    await before.set_reference("churn", 2)
    await before.record_predictions("churn", FEATURES, rows_list(normal_rows(EVERY, seed=2)))

    after = core_of(store, source)  # same store, empty memory
    report = await after.record_predictions("churn", FEATURES, rows_list(normal_rows(EVERY, seed=3)))

    assert source.fetches == [("churn", 2), ("churn", 2)]
    assert report is not None
    assert report.model_version == 2 and report.predictions_seen == 2 * EVERY
    assert report.window_size == 2 * EVERY  # the window is in the store: it survives the restart


# -- refusals --------------------------------------------------------------------------------------
async def test_rows_must_match_the_reference_width(store: MonitorStore, source: FakeSource) -> None:
    core = core_of(store, source)
    await core.set_reference("churn", 1)
    with pytest.raises(InvalidArgument, match="3 features"):
        await core.record_predictions("churn", [], [[1.0, 2.0, 3.0]])


async def test_rows_must_match_earlier_rows_before_any_reference(
    store: MonitorStore, source: FakeSource
) -> None:
    core = core_of(store, source)
    await core.record_predictions("churn", [], [[1.0, 2.0]])
    with pytest.raises(InvalidArgument, match="earlier ones had 2"):
        await core.record_predictions("churn", [], [[1.0, 2.0, 3.0]])


@pytest.mark.parametrize(
    ("features", "inputs", "message"),
    [
        (FEATURES, [[1.0, 2.0, 3.0, 4.0], [1.0]], "not a matrix"),
        ([], [[]], "non-empty rows"),
        (["a", "b"], [[1.0, 2.0, 3.0, 4.0]], "2 feature names"),
        (FEATURES, [[1.0, 2.0, float("nan"), 4.0]], "finite"),
    ],
)
async def test_malformed_inputs_are_refused(
    store: MonitorStore, source: FakeSource, features: list[str], inputs: list[list[float]], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await core_of(store, source).record_predictions("churn", features, inputs)


async def test_a_refused_batch_leaves_the_window_alone(store: MonitorStore, source: FakeSource) -> None:
    core = core_of(store, source)
    await core.set_reference("churn", 1)
    await core.record_predictions("churn", FEATURES, rows_list(normal_rows(EVERY - 1, seed=2)))
    with pytest.raises(InvalidArgument):
        await core.record_predictions("churn", FEATURES, [[1.0, 2.0, 3.0, float("inf")]])
    report = await core.record_predictions("churn", FEATURES, rows_list(normal_rows(1, seed=3)))
    assert report is not None and report.predictions_seen == EVERY


async def test_latest_report_needs_a_model_and_a_report(store: MonitorStore, source: FakeSource) -> None:
    core = core_of(store, source)
    with pytest.raises(InvalidArgument):
        core.latest_report("")
    with pytest.raises(NotFound, match="no drift report for model 'churn'"):
        core.latest_report("churn")


async def test_the_evidently_mode_keeps_evidentlys_tests_and_thresholds(
    store: MonitorStore, source: FakeSource
) -> None:
    core = core_of(store, source, drift_mode="evidently")
    await core.set_reference("churn", 1)
    shifted = normal_rows(WINDOW, seed=2)
    shifted[:, :3] += 3.0
    report = await core.record_predictions("churn", FEATURES, rows_list(shifted))
    assert report is not None and report.dataset_drifted
    assert all(feature.test == "ks" and feature.threshold == 0.05 for feature in report.features)
    with pytest.raises(ValueError, match="unknown drift mode"):
        DriftPolicy(drift_mode="nannyml")


async def test_calibrated_reports_on_unshifted_windows_drift_rarely(
    store: MonitorStore, source: FakeSource
) -> None:
    """The calibrated decision at 1%: 60 reports on fresh windows of the reference's own law."""
    core = core_of(store, source)
    await core.set_reference("churn", 1)
    drifted = 0
    for seed in range(100, 160):
        report = await core.record_predictions("churn", FEATURES, rows_list(normal_rows(WINDOW, seed=seed)))
        assert report is not None
        drifted += report.dataset_drifted
    assert drifted <= 3  # expected 0.6; P(more than 3) < 0.5%


async def test_one_feature_moved_by_one_std_drifts_the_calibrated_decision(
    store: MonitorStore, source: FakeSource
) -> None:
    core = core_of(store, source)
    await core.set_reference("churn", 1)
    shifted = normal_rows(WINDOW, seed=3)
    shifted[:, 1] += 1.0
    report = await core.record_predictions("churn", FEATURES, rows_list(shifted))
    assert report is not None and report.dataset_drifted and report.drifted_features == ["beta"]


class _UnmonitoredSource(FakeSource):
    """Version 2 was imported without a reference dataset."""

    async def fetch(self, model: str, model_version: int) -> Reference:
        if model_version == 2:
            raise Unmonitored(f"{model} v2 was imported without a reference dataset")
        return await super().fetch(model, model_version)


async def test_an_unmonitored_champion_is_logged_not_failed(store: MonitorStore) -> None:
    core = core_of(store, _UnmonitoredSource())
    await core.set_reference("m", 1)
    assert await core.set_reference("m", 2) is None  # no exception: nothing to retry or dead-letter
    # v1's reference stays on record; the unmonitored champion's rows are not judged against it.
    info = store.reference("m")
    assert info is not None and info.model_version == 1
    assert (
        await core.record_predictions("m", FEATURES, rows_list(normal_rows(30, seed=2)), model_version=2)
        is None
    )
