"""What a report shows beside each statistic: the reference's and the window's distributions on the
bins the test itself counts in (the statistic recomputed from them comes out the same), bounded in
size; the history's per-feature statistics; and stores written before either still read."""

from __future__ import annotations

import contextlib
import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import distance

from cascade.client.monitor import DriftHistory
from cascade.client.records import DriftReport as DriftReportRecord
from cascade.services.monitor.drift import (
    CATEGORICAL,
    MAX_BINS,
    ColumnReference,
    Distribution,
    FeatureDrift,
    PreparedReference,
    calibrate,
    column_drift,
    distribution,
    evaluate,
)
from cascade.services.monitor.grpc_api import history_message, report_message
from cascade.services.monitor.store import DriftReport, MonitorStore

RNG = np.random.default_rng(7)
NUMERIC_REFERENCE = ColumnReference.of("amount", RNG.normal(size=800))
WINDOW = RNG.normal(loc=0.8, size=40)
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def shares_sum_to_one(shares: Distribution) -> None:
    assert sum(shares.reference) == pytest.approx(1.0) and sum(shares.window) == pytest.approx(1.0)
    assert len(shares.reference) == len(shares.window) <= MAX_BINS


def test_numeric_bins_are_the_ones_jensen_shannon_and_psi_count_in() -> None:
    shares = distribution(NUMERIC_REFERENCE, WINDOW, "jensenshannon")
    shares_sum_to_one(shares)
    assert len(shares.edges) == len(shares.reference) + 1 and not shares.categories
    assert list(shares.edges) == sorted(shares.edges)
    assert shares.edges[0] <= min(WINDOW.min(), NUMERIC_REFERENCE.sorted_values[0])
    assert shares.edges[-1] >= max(WINDOW.max(), NUMERIC_REFERENCE.sorted_values[-1])
    tested = column_drift(NUMERIC_REFERENCE, WINDOW, "jensenshannon")
    assert distance.jensenshannon(shares.reference, shares.window) == pytest.approx(tested.statistic)
    # The CDF tests have no bins of their own: they are shown on the same ones.
    assert distribution(NUMERIC_REFERENCE, WINDOW, "ks") == shares
    assert distribution(NUMERIC_REFERENCE, WINDOW, "ks_calibrated") == shares


@pytest.mark.parametrize("rows", [21, 500, 1001, 100_000])
def test_numeric_bins_are_numpys_sturges_bins_over_both_samples(rows: int) -> None:
    reference = ColumnReference.of("amount", np.random.default_rng(rows).lognormal(size=rows))
    window = np.random.default_rng(1).normal(loc=2.0, size=40)
    both = np.concatenate([reference.sorted_values, reference.comparable(window)])
    shares = distribution(reference, window, "psi")
    np.testing.assert_array_equal(shares.edges, np.histogram_bin_edges(both, bins="sturges"))


def test_categories_are_the_ones_chi_squared_counts_in() -> None:
    reference = ColumnReference.of("plan", RNG.integers(0, 3, 600).astype(float), CATEGORICAL)
    window = np.array([0.0] * 10 + [1.0] * 10 + [2.0] * 15 + [7.0] * 5)  # 7: never seen before
    shares = distribution(reference, window, "chisquare")
    shares_sum_to_one(shares)
    assert shares.categories == ("0", "1", "2", "7") and not shares.edges
    assert shares.reference[3] == 0 and shares.window[3] == pytest.approx(5 / 40)
    assert np.asarray(shares.window) * 40 == pytest.approx(np.bincount(window.astype(int))[[0, 1, 2, 7]])


def test_the_calibrated_chi_squared_is_recomputed_from_its_pooled_categories() -> None:
    common = RNG.integers(0, 3, 600).astype(float)
    rare = np.full(6, 9.0)  # expected 0.4 times in a window of 40: pooled with the unseen values
    prepared = PreparedReference.of(np.concatenate([common, rare])[:, None], ["plan"], {"plan": CATEGORICAL})
    window = np.array([0.0] * 12 + [1.0] * 12 + [2.0] * 12 + [5.0] * 4)
    verdict = evaluate(prepared, calibrate(prepared, 40, draws=20), window[:, None])
    [tested] = verdict.features
    shares = distribution(prepared.columns[0], window, tested.test)
    shares_sum_to_one(shares)
    assert tested.test == "chisquare_calibrated" and shares.categories == ("0", "1", "2", "other")
    reference, current = np.asarray(shares.reference), np.asarray(shares.window)
    rows = prepared.columns[0].rows
    pooled = (reference * rows + current * 40) / (rows + 40)
    statistic = np.sum((current - reference) ** 2 / pooled) / (1 / 40 + 1 / rows)
    assert statistic == pytest.approx(tested.statistic)


def test_many_categories_are_bounded_with_the_rarest_pooled() -> None:
    values = np.repeat(np.arange(300.0), np.arange(300) + 1)  # value v appears v + 1 times
    reference = ColumnReference.of("city", values, CATEGORICAL)
    shares = distribution(reference, RNG.choice(values, 500), "jensenshannon")
    shares_sum_to_one(shares)
    assert len(shares.categories) == MAX_BINS and shares.categories[-1] == "other"
    assert "299" in shares.categories and "0" not in shares.categories  # the common ones are kept


def report(distributions: bool) -> DriftReport:
    shares = distribution(NUMERIC_REFERENCE, WINDOW, "ks_calibrated") if distributions else None
    features = (
        FeatureDrift("amount", "ks_calibrated", 0.5, 1e-6, 0.3, True, shares),
        FeatureDrift("age", "ks_calibrated", 0.1, 0.8, 0.3, False, shares),
    )
    return DriftReport(
        model="churn",
        model_version=2,
        reference_dataset="customers",
        reference_dataset_version="abc",
        window_size=40,
        features=features,
        dataset_drifted=True,
        computed_at=AT,
        predictions_seen=80,
        prediction=FeatureDrift("prediction", "z", 2.5, 0.01, 0.05, True, shares),
        reference_rows=800,
    )


def test_reports_keep_distributions_and_verdicts_keep_each_features_test(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path)
    try:
        store.save_report(report(distributions=True))
        assert store.latest_report("churn") == report(distributions=True)
        [verdict] = store.verdicts("churn")
    finally:
        store.close()
    assert [(f.feature, f.statistic, f.threshold, f.drifted) for f in verdict.features] == [
        ("amount", 0.5, 0.3, True),
        ("age", 0.1, 0.3, False),
    ]
    assert all(f.distribution is None for f in verdict.features)
    assert verdict.prediction == FeatureDrift("prediction", "z", 2.5, 0.01, 0.05, True)  # no distribution


def test_the_api_and_the_sdk_records_carry_them(tmp_path: Path) -> None:
    shares = distribution(NUMERIC_REFERENCE, WINDOW, "ks_calibrated")
    record = DriftReportRecord.of(report_message(report(distributions=True)))
    amount = record.features[0]
    assert amount.bin_edges == shares.edges and not amount.categories
    assert (amount.reference_frequencies, amount.window_frequencies) == (shares.reference, shares.window)
    assert amount.score == 0.5 and not amount.drifts_below  # calibrated: the statistic against the threshold
    assert record.prediction is not None and record.prediction.drifts_below
    assert record.prediction.score == 0.01

    store = MonitorStore(tmp_path)
    try:
        store.save_report(report(distributions=True))
        store.save_drift_event("churn", "e1", "drift", 2, "2 of 2 drifted", AT, triggered="none: cooldown")
        history = DriftHistory.of(
            history_message("churn", store.verdicts("churn"), store.drift_events("churn"))
        )
    finally:
        store.close()
    [verdict] = history.verdicts
    assert [f.feature for f in verdict.features] == ["amount", "age"] and verdict.features[0].drifted
    assert not verdict.features[0].bin_edges and verdict.prediction is not None
    [event] = history.drift_events
    assert (event.triggered, event.emitted) == ("none: cooldown", True)


# The first schema of the tables that gained columns, as monitors before them wrote it.
OLD_SCHEMA = """
CREATE TABLE verdicts (
    model TEXT NOT NULL, computed_at TEXT NOT NULL, model_version INTEGER NOT NULL,
    reference_dataset TEXT NOT NULL, reference_dataset_version TEXT NOT NULL,
    window_size INTEGER NOT NULL, predictions_seen INTEGER NOT NULL,
    dataset_drifted INTEGER NOT NULL, drifted_features_json TEXT NOT NULL
);
CREATE TABLE drift_events (
    model TEXT NOT NULL, event_id TEXT PRIMARY KEY, kind TEXT NOT NULL,
    model_version INTEGER NOT NULL, summary TEXT NOT NULL, emitted_at TEXT NOT NULL
);
CREATE TABLE latest_reports (model TEXT PRIMARY KEY, report_json TEXT NOT NULL);
"""
OLD_REPORT = (
    '{"model": "churn", "model_version": 1, "reference_dataset": "customers", '
    '"reference_dataset_version": "abc", "window_size": 40, "features": [{"feature": "amount", '
    '"test": "ks", "statistic": 0.5, "p_value": NaN, "threshold": 0.05, "drifted": true}], '
    '"dataset_drifted": true, "computed_at": "2025-01-02T03:04:05+00:00", "predictions_seen": 40, '
    '"prediction": null, "reference_rows": 500, "performance": null}'
)


def test_a_store_written_before_the_new_columns_still_reads(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "monitor.sqlite3")) as db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO verdicts VALUES (?,?,?,?,?,?,?,?,?)",
            ("churn", AT.isoformat(), 1, "customers", "abc", 40, 40, 1, '["amount"]'),
        )
        db.execute(
            "INSERT INTO drift_events VALUES (?,?,?,?,?,?)", ("churn", "e0", "drift", 1, "s", AT.isoformat())
        )
        db.execute("INSERT INTO latest_reports VALUES (?,?)", ("churn", OLD_REPORT))
        db.commit()

    store = MonitorStore(tmp_path)
    try:
        [old] = store.verdicts("churn")
        assert old.drifted_features == ("amount",) and old.features == () and old.prediction is None
        [event] = store.drift_events("churn", emitted_only=True)  # the old monitor recorded only those
        assert (event.event_id, event.triggered, event.emitted) == ("e0", "", True)
        latest = store.latest_report("churn")
        assert latest is not None and latest.features[0].distribution is None
        assert math.isnan(latest.features[0].p_value)
        store.save_report(report(distributions=False))  # and new rows go in beside the old
        assert [len(v.features) for v in store.verdicts("churn")] == [2, 0]
    finally:
        store.close()
