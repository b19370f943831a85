"""The monitor's store on both of its databases (SQLite by default, PostgreSQL by URL, the suite's
pgserver): what it keeps survives reopening, the migrations build exactly the declared schema and
adopt a file of the first sqlite3 store, and two monitor replicas sharing one database lose nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cascade.database import sqlite_url
from cascade.services.monitor.drift import FeatureDrift
from cascade.services.monitor.store import (
    DriftReport,
    MonitorStore,
    Performance,
    ReferenceInfo,
    RolloutStepRecord,
)
from cascade.services.monitor.tables import metadata
from tests.databases import database_url_for

COMPUTED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(request, "monitor", sqlite_url(tmp_path / "monitor.sqlite3"))


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


def test_latest_report_survives_reopening(tmp_path: Path, database_url: str) -> None:
    store = MonitorStore(tmp_path, database_url)
    store.save_report(report(drifted=False, seen=250))
    newest = report(drifted=True, seen=300, computed_at=COMPUTED_AT + timedelta(minutes=1))
    store.save_report(newest)
    store.close()

    reopened = MonitorStore(tmp_path, database_url)
    try:
        assert reopened.latest_report("churn") == newest
        assert reopened.latest_report("other") is None
    finally:
        reopened.close()


def test_every_verdict_is_kept_newest_first(tmp_path: Path, database_url: str) -> None:
    store = MonitorStore(tmp_path, database_url)
    store.save_report(report(drifted=False, seen=250))
    store.save_report(report(drifted=True, seen=300, computed_at=COMPUTED_AT + timedelta(minutes=1)))

    verdicts = store.verdicts("churn")

    assert [(v.predictions_seen, v.dataset_drifted) for v in verdicts] == [(300, True), (250, False)]
    assert verdicts[0].drifted_features == ("alpha", "beta")
    assert verdicts[1].drifted_features == ("alpha",)
    assert verdicts[0].reference_dataset_version == "abc123" and verdicts[0].model_version == 3
    assert store.verdicts("churn", limit=1) == verdicts[:1]
    store.close()


def test_a_reference_is_replaced_and_survives_reopening(tmp_path: Path, database_url: str) -> None:
    store = MonitorStore(tmp_path, database_url)
    assert store.reference("churn") is None
    store.save_reference(ReferenceInfo("churn", 1, "customers", "v1", ("alpha", "beta"), 500))
    store.save_reference(ReferenceInfo("churn", 2, "customers", "v2", ("alpha", "beta"), 700))
    store.close()

    reopened = MonitorStore(tmp_path, database_url)
    assert reopened.reference("churn") == ReferenceInfo("churn", 2, "customers", "v2", ("alpha", "beta"), 700)
    reopened.close()


def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    MonitorStore(tmp_path).close()
    with contextlib.closing(sqlite3.connect(tmp_path / "monitor.sqlite3")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_migrations_build_exactly_the_declared_schema(tmp_path: Path, database_url: str) -> None:
    store = MonitorStore(tmp_path, database_url)
    MonitorStore(tmp_path, database_url).close()  # a second start finds the schema current
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0002"
    store.close()


def test_a_rollout_step_is_replaced_and_listed(tmp_path: Path, database_url: str) -> None:
    store = MonitorStore(tmp_path, database_url)
    first = RolloutStepRecord("churn", 4, 1, COMPUTED_AT, '{"n": 1}', COMPUTED_AT)
    store.save_rollout_step(first)
    later = dataclasses.replace(
        first, step=2, evidence_json='{"n": 0}', updated_at=COMPUTED_AT + timedelta(1)
    )
    store.save_rollout_step(later)
    store.save_rollout_step(dataclasses.replace(first, model="alpha"))
    assert store.rollout_step("churn") == later and store.rollout_step("other") is None
    assert [r.model for r in store.rollout_steps()] == ["alpha", "churn"]
    store.close()


# The last schema the sqlite3 store created itself, before migrations.
_BEFORE_MIGRATIONS = """
CREATE TABLE reference_datasets (model TEXT PRIMARY KEY, model_version INTEGER NOT NULL,
    dataset TEXT NOT NULL, dataset_version TEXT NOT NULL, features_json TEXT NOT NULL,
    rows INTEGER NOT NULL);
CREATE TABLE latest_reports (model TEXT PRIMARY KEY, report_json TEXT NOT NULL);
CREATE TABLE verdicts (model TEXT NOT NULL, computed_at TEXT NOT NULL,
    model_version INTEGER NOT NULL, reference_dataset TEXT NOT NULL,
    reference_dataset_version TEXT NOT NULL, window_size INTEGER NOT NULL,
    predictions_seen INTEGER NOT NULL, dataset_drifted INTEGER NOT NULL,
    drifted_features_json TEXT NOT NULL, features_json TEXT, prediction_json TEXT);
CREATE INDEX verdicts_by_model ON verdicts(model, computed_at);
CREATE TABLE drift_events (model TEXT NOT NULL, event_id TEXT PRIMARY KEY, kind TEXT NOT NULL,
    model_version INTEGER NOT NULL, summary TEXT NOT NULL, emitted_at TEXT NOT NULL,
    triggered TEXT NOT NULL DEFAULT '', emitted INTEGER NOT NULL DEFAULT 1);
CREATE TABLE rollout_steps (model TEXT PRIMARY KEY, challenger_version INTEGER NOT NULL,
    step INTEGER NOT NULL, step_started_at TEXT NOT NULL, evidence_json TEXT NOT NULL,
    updated_at TEXT NOT NULL);
"""


def test_a_store_from_before_migrations_is_adopted_in_its_order(tmp_path: Path) -> None:
    at = COMPUTED_AT.isoformat()
    with contextlib.closing(sqlite3.connect(tmp_path / "monitor.sqlite3")) as db:
        db.executescript(_BEFORE_MIGRATIONS)
        for seen in (10, 20):  # two lines of one instant: only the rowid told them apart
            db.execute(
                "INSERT INTO verdicts VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                ("churn", at, 3, "customers", "abc", 10, seen, 0, "[]", "[]", None),
            )
        for event_id in ("z-first", "a-second"):
            db.execute(
                "INSERT INTO drift_events VALUES (?,?,?,?,?,?,?,?)",
                ("churn", event_id, "drift", 3, "s", at, "retrain", 1),
            )
        db.execute(
            "INSERT INTO reference_datasets VALUES (?,?,?,?,?,?)",
            ("churn", 3, "customers", "abc", '["a"]', 9),
        )
        db.commit()

    store = MonitorStore(tmp_path)
    assert [v.predictions_seen for v in store.verdicts("churn")] == [20, 10]
    assert [e.event_id for e in store.drift_events("churn")] == ["a-second", "z-first"]
    assert store.reference("churn") == ReferenceInfo("churn", 3, "customers", "abc", ("a",), 9)
    store.save_report(report(drifted=True, seen=30))  # new lines go in after the adopted ones
    assert [v.predictions_seen for v in store.verdicts("churn")] == [30, 20, 10]
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0002"
    store.close()


def _race(workers: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(workers)

    def run(worker: int) -> None:
        start.wait()
        try:
            work(worker)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_two_replicas_lose_no_report_verdict_or_event(tmp_path: Path, database_url: str) -> None:
    replicas = [MonitorStore(tmp_path, database_url), MonitorStore(tmp_path, database_url)]
    replicas[0].save_report(report(drifted=False, seen=0))
    rounds = 40
    performance = Performance("accuracy", 0.8, 50, 0.9, 0.05, True)
    regressed: list[tuple[int, int]] = []  # (saved, then read) when a report went back in time

    def work(worker: int) -> None:
        store = replicas[worker]
        for n in range(1, rounds + 1):
            if worker == 0:  # newer reports, while the other replica measures decay on the latest
                store.save_report(
                    report(drifted=False, seen=n, computed_at=COMPUTED_AT + timedelta(seconds=n))
                )
                latest = store.latest_report("churn")
                if latest is None or latest.predictions_seen < n:
                    regressed.append((n, latest.predictions_seen if latest else -1))
            else:
                store.update_performance("churn", performance)
            # The same decision recorded by both (one event id), and one of each replica's own.
            store.save_drift_event("churn", f"shared-{n}", "drift", 3, "s", COMPUTED_AT)
            store.save_drift_event("churn", f"own-{worker}-{n}", "drift", 3, "s", COMPUTED_AT)

    _race(2, work)
    assert regressed == []
    store = replicas[1]
    latest = store.latest_report("churn")
    # The last report saved is the latest: no decay update wrote an older one back over it.
    assert latest is not None and latest.predictions_seen == rounds
    assert [v.predictions_seen for v in store.verdicts("churn", limit=1000)] == list(range(rounds, -1, -1))
    events = store.drift_events("churn", limit=1000)
    assert len(events) == 3 * rounds and len({e.event_id for e in events}) == 3 * rounds
    for replica in replicas:
        replica.close()
