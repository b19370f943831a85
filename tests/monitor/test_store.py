from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cascade.services.monitor.drift import FeatureDrift
from cascade.services.monitor.store import DriftReport, MonitorStore, ReferenceInfo

COMPUTED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def report(drifted: bool, seen: int, computed_at: datetime = COMPUTED_AT) -> DriftReport:
    return DriftReport(
        model="churn",
        model_version=3,
        reference_dataset="customers",
        reference_dataset_version="abc123",
        window_size=200,
        features=(
            FeatureDrift("alpha", "ks", 0.41, 1e-9, 0.05, True),
            FeatureDrift("beta", "ks", 0.05, 0.7, 0.05, drifted),
        ),
        dataset_drifted=drifted,
        computed_at=computed_at,
        predictions_seen=seen,
    )


def test_latest_report_survives_reopening(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path)
    store.save_report(report(drifted=False, seen=250))
    newest = report(drifted=True, seen=300, computed_at=COMPUTED_AT + timedelta(minutes=1))
    store.save_report(newest)
    store.close()

    reopened = MonitorStore(tmp_path)
    try:
        assert reopened.latest_report("churn") == newest
        assert reopened.latest_report("other") is None
    finally:
        reopened.close()


def test_every_verdict_is_kept_newest_first(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path)
    store.save_report(report(drifted=False, seen=250))
    store.save_report(report(drifted=True, seen=300, computed_at=COMPUTED_AT + timedelta(minutes=1)))

    verdicts = store.verdicts("churn")

    assert [(v.predictions_seen, v.dataset_drifted) for v in verdicts] == [(300, True), (250, False)]
    assert verdicts[0].drifted_features == ("alpha", "beta")
    assert verdicts[1].drifted_features == ("alpha",)
    assert verdicts[0].reference_dataset_version == "abc123" and verdicts[0].model_version == 3
    assert store.verdicts("churn", limit=1) == verdicts[:1]
    store.close()


def test_a_reference_is_replaced_and_survives_reopening(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path)
    assert store.reference("churn") is None
    store.save_reference(ReferenceInfo("churn", 1, "customers", "v1", ("alpha", "beta"), 500))
    store.save_reference(ReferenceInfo("churn", 2, "customers", "v2", ("alpha", "beta"), 700))
    store.close()

    reopened = MonitorStore(tmp_path)
    assert reopened.reference("churn") == ReferenceInfo("churn", 2, "customers", "v2", ("alpha", "beta"), 700)
    reopened.close()


def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    MonitorStore(tmp_path).close()
    with contextlib.closing(sqlite3.connect(tmp_path / "monitor.sqlite3")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
