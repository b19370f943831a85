"""The monitor's own store, SQLite in WAL mode: each model's current reference, its latest drift
report, and the history of every verdict. Reports survive restarts and name the reference they used;
the reference data itself is not kept here, since ingest serves it again on demand.

Columns added since the first schema are added to an older file when it is opened (`_ADDED`);
rows written before have them empty: a verdict without its per-feature tests, an event without
what it triggered (those were all emitted)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cascade.services.monitor.attribution import AttributionShift
from cascade.services.monitor.drift import Distribution, FeatureDrift

__all__ = [
    "DriftEventRecord",
    "DriftReport",
    "MonitorStore",
    "Performance",
    "ReferenceInfo",
    "RolloutStepRecord",
    "Verdict",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reference_datasets (
    model TEXT PRIMARY KEY,
    model_version INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    dataset_version TEXT NOT NULL,
    features_json TEXT NOT NULL,
    rows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS latest_reports (
    model TEXT PRIMARY KEY,
    report_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    model TEXT NOT NULL,
    computed_at TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    reference_dataset TEXT NOT NULL,
    reference_dataset_version TEXT NOT NULL,
    window_size INTEGER NOT NULL,
    predictions_seen INTEGER NOT NULL,
    dataset_drifted INTEGER NOT NULL,
    drifted_features_json TEXT NOT NULL,
    features_json TEXT,
    prediction_json TEXT
);
CREATE INDEX IF NOT EXISTS verdicts_by_model ON verdicts(model, computed_at);
CREATE TABLE IF NOT EXISTS drift_events (
    model TEXT NOT NULL,
    event_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    summary TEXT NOT NULL,
    emitted_at TEXT NOT NULL,
    triggered TEXT NOT NULL DEFAULT '',
    emitted INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS rollout_steps (
    model TEXT PRIMARY KEY,
    challenger_version INTEGER NOT NULL,
    step INTEGER NOT NULL,
    step_started_at TEXT NOT NULL,
    evidence_json TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""
# (table, column, declaration) added after the first schema, for files written before them.
_ADDED = (
    ("verdicts", "features_json", "TEXT"),
    ("verdicts", "prediction_json", "TEXT"),
    ("drift_events", "triggered", "TEXT NOT NULL DEFAULT ''"),
    ("drift_events", "emitted", "INTEGER NOT NULL DEFAULT 1"),
)


@dataclass(frozen=True)
class ReferenceInfo:
    """Which data a model's drift is measured against: the dataset version its champion was trained on."""

    model: str
    model_version: int
    dataset: str
    dataset_version: str
    features: tuple[str, ...]
    rows: int


@dataclass(frozen=True)
class Performance:
    """The champion's performance on the latest window: measured from joined labels (`value`), and
    estimated without labels from predicted probabilities (`estimated_accuracy`, an *estimate*)."""

    metric: str  # "accuracy" or "r2"
    value: float | None  # on `labelled_rows` labelled predictions; None before any label
    labelled_rows: int
    champion_value: float | None  # the champion's metric on its held-out rows at training
    threshold: float  # decay when champion_value - value exceeds it
    decayed: bool
    estimated_accuracy: float | None = None
    estimate_note: str = ""

    @property
    def summary(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.3f}"
        champion = "n/a" if self.champion_value is None else f"{self.champion_value:.3f}"
        return (
            f"{self.metric} {value} on {self.labelled_rows} labelled predictions against {champion} at "
            f"validation (decay when more than {self.threshold:g} lower)"
        )


@dataclass(frozen=True)
class DriftEventRecord:
    """One time the monitor's rule said "act": a *drift detected* it emitted, or one it held back
    (`emitted` False), and what that triggered, in words."""

    event_id: str
    kind: str
    model_version: int
    summary: str
    emitted_at: datetime  # when it was decided
    triggered: str = ""
    emitted: bool = True


@dataclass(frozen=True)
class DriftReport:
    model: str
    model_version: int  # the champion whose reference the window was compared with
    reference_dataset: str
    reference_dataset_version: str
    window_size: int  # prediction rows actually compared
    features: tuple[FeatureDrift, ...]
    dataset_drifted: bool
    computed_at: datetime
    predictions_seen: int
    prediction: FeatureDrift | None = None  # the predicted output against the training labels
    reference_rows: int = 0
    performance: Performance | None = None
    # Drift explained (a drifted window only): the features whose share of the champion's
    # attributions moved most from the reference, largest move first; and how they were measured,
    # or why they could not be.
    attribution_shift: tuple[AttributionShift, ...] = ()
    attribution_note: str = ""

    @property
    def drifted_features(self) -> list[str]:
        return [feature.feature for feature in self.features if feature.drifted]


@dataclass(frozen=True)
class Verdict:
    """One line of a model's drift history."""

    model_version: int
    reference_dataset_version: str
    window_size: int
    predictions_seen: int
    dataset_drifted: bool
    drifted_features: tuple[str, ...]
    computed_at: datetime
    features: tuple[FeatureDrift, ...] = ()  # each test at the time, without distributions
    prediction: FeatureDrift | None = None


@dataclass(frozen=True)
class RolloutStepRecord:
    """The evidence a model's running rollout gathered in its current step, as the rollout policy
    wrote it (`evidence_json`, its own format): a restart resumes the step instead of starting over.
    One per model; a new step or a new rollout replaces it."""

    model: str
    challenger_version: int
    step: int
    step_started_at: datetime
    evidence_json: str
    updated_at: datetime


class MonitorStore:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(root / "monitor.sqlite3", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        for table, column, declaration in _ADDED:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        self._db.close()

    # -- references ----------------------------------------------------------------------------
    def save_reference(self, info: ReferenceInfo) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO reference_datasets VALUES (?,?,?,?,?,?)",
            (
                info.model,
                info.model_version,
                info.dataset,
                info.dataset_version,
                json.dumps(info.features),
                info.rows,
            ),
        )

    def reference(self, model: str) -> ReferenceInfo | None:
        row = self._db.execute(
            "SELECT model_version, dataset, dataset_version, features_json, rows FROM reference_datasets "
            "WHERE model=?",
            (model,),
        ).fetchone()
        if row is None:
            return None
        return ReferenceInfo(model, row[0], row[1], row[2], tuple(json.loads(row[3])), row[4])

    # -- reports -------------------------------------------------------------------------------
    def save_report(self, report: DriftReport) -> None:
        """Replace the model's latest report and append its verdict to the history, atomically."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO latest_reports VALUES (?,?) "
                "ON CONFLICT(model) DO UPDATE SET report_json=excluded.report_json",
                (report.model, _report_to_json(report)),
            )
            self._db.execute(
                "INSERT INTO verdicts (model, computed_at, model_version, reference_dataset, "
                "reference_dataset_version, window_size, predictions_seen, dataset_drifted, "
                "drifted_features_json, features_json, prediction_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    report.model,
                    report.computed_at.isoformat(),
                    report.model_version,
                    report.reference_dataset,
                    report.reference_dataset_version,
                    report.window_size,
                    report.predictions_seen,
                    int(report.dataset_drifted),
                    json.dumps(report.drifted_features),
                    json.dumps([_without_distribution(feature) for feature in report.features]),
                    json.dumps(_without_distribution(report.prediction)) if report.prediction else None,
                ),
            )

    def update_performance(self, model: str, performance: Performance) -> None:
        """Put a newer decay measurement into the model's latest report."""
        with self._transaction():
            report = self.latest_report(model)
            if report is None:
                return
            self._db.execute(
                "UPDATE latest_reports SET report_json=? WHERE model=?",
                (_report_to_json(dataclasses.replace(report, performance=performance)), model),
            )

    def save_drift_event(
        self,
        model: str,
        event_id: str,
        kind: str,
        model_version: int,
        summary: str,
        emitted_at: datetime,
        *,
        triggered: str = "",
        emitted: bool = True,
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO drift_events (model, event_id, kind, model_version, summary, emitted_at, "
            "triggered, emitted) VALUES (?,?,?,?,?,?,?,?)",
            (model, event_id, kind, model_version, summary, emitted_at.isoformat(), triggered, int(emitted)),
        )

    def drift_events(
        self, model: str, limit: int = 100, *, emitted_only: bool = False
    ) -> list[DriftEventRecord]:
        """The model's drift events, newest first: the emitted ones only, or the held-back ones too."""
        rows = self._db.execute(
            "SELECT event_id, kind, model_version, summary, emitted_at, triggered, emitted FROM drift_events "
            "WHERE model=? AND (emitted=1 OR NOT ?) ORDER BY emitted_at DESC, rowid DESC LIMIT ?",
            (model, emitted_only, limit),
        )
        return [
            DriftEventRecord(r[0], r[1], r[2], r[3], datetime.fromisoformat(r[4]), r[5], bool(r[6]))
            for r in rows
        ]

    def latest_report(self, model: str) -> DriftReport | None:
        row = self._db.execute("SELECT report_json FROM latest_reports WHERE model=?", (model,)).fetchone()
        return _report_from_json(row[0]) if row else None

    def verdicts(self, model: str, limit: int = 100) -> list[Verdict]:
        """The model's most recent verdicts, newest first."""
        rows = self._db.execute(
            "SELECT model_version, reference_dataset_version, window_size, predictions_seen, "
            "dataset_drifted, drifted_features_json, computed_at, features_json, prediction_json "
            "FROM verdicts WHERE model=? ORDER BY computed_at DESC, rowid DESC LIMIT ?",
            (model, limit),
        )
        return [
            Verdict(
                row[0],
                row[1],
                row[2],
                row[3],
                bool(row[4]),
                tuple(json.loads(row[5])),
                datetime.fromisoformat(row[6]),
                tuple(_feature_from_json(feature) for feature in json.loads(row[7] or "[]")),
                _feature_from_json(json.loads(row[8])) if row[8] else None,
            )
            for row in rows
        ]

    # -- rollouts ------------------------------------------------------------------------------
    def save_rollout_step(self, record: RolloutStepRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO rollout_steps (model, challenger_version, step, step_started_at, "
            "evidence_json, updated_at) VALUES (?,?,?,?,?,?)",
            (
                record.model,
                record.challenger_version,
                record.step,
                record.step_started_at.isoformat(),
                record.evidence_json,
                record.updated_at.isoformat(),
            ),
        )

    def rollout_step(self, model: str) -> RolloutStepRecord | None:
        row = self._db.execute(
            "SELECT challenger_version, step, step_started_at, evidence_json, updated_at FROM rollout_steps "
            "WHERE model=?",
            (model,),
        ).fetchone()
        if row is None:
            return None
        return RolloutStepRecord(
            model, row[0], row[1], datetime.fromisoformat(row[2]), row[3], datetime.fromisoformat(row[4])
        )

    def rollout_steps(self) -> list[RolloutStepRecord]:
        """Every model's recorded rollout step (to resume them at start-up)."""
        models = [row[0] for row in self._db.execute("SELECT model FROM rollout_steps ORDER BY model")]
        return [record for model in models if (record := self.rollout_step(model)) is not None]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _report_to_json(report: DriftReport) -> str:
    document: dict[str, Any] = asdict(report)
    document["computed_at"] = report.computed_at.isoformat()
    return json.dumps(document)


def _without_distribution(feature: FeatureDrift) -> dict[str, Any]:
    document = asdict(feature)
    document.pop("distribution")
    return document


def _feature_from_json(document: dict[str, Any]) -> FeatureDrift:
    """A feature's test as stored: with its distribution (reports since they carry one) or without."""
    shares = document.pop("distribution", None)
    distribution = None
    if shares:
        distribution = Distribution(**{name: tuple(values) for name, values in shares.items()})
    return FeatureDrift(**document, distribution=distribution)


def _report_from_json(text: str) -> DriftReport:
    document = json.loads(text)
    document["features"] = tuple(_feature_from_json(feature) for feature in document["features"])
    document["computed_at"] = datetime.fromisoformat(document["computed_at"])
    if document.get("prediction"):
        document["prediction"] = _feature_from_json(document["prediction"])
    if document.get("performance"):
        document["performance"] = Performance(**document["performance"])
    document["attribution_shift"] = tuple(
        AttributionShift(**shift) for shift in document.get("attribution_shift", ())
    )
    return DriftReport(**document)
