"""The monitor's own store: each model's current reference, its latest drift report, the history of
every verdict and drift decision, and its rollout's step. SQLite (WAL) by default, PostgreSQL by URL,
both through SQLAlchemy Core with Alembic migrations (services/monitor/migrations), which adopt a file
written by the first sqlite3 store with its rows. Reports survive restarts and name the reference
they used; the reference data itself is not kept here, since ingest serves it again on demand.

Replicas may share one PostgreSQL database: every write is one transaction, keyed rows are upserted,
and the one read-modify-write (a newer decay measurement into the latest report) holds the report's
row while it does it. Rows written before columns were added have them empty: a verdict without its
per-feature tests, an event without what it triggered (those were all emitted)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cascade import database
from cascade.services.monitor import tables
from cascade.services.monitor.attribution import AttributionShift
from cascade.services.monitor.drift import Distribution, FeatureDrift

__all__ = [
    "MIGRATIONS",
    "DriftEventRecord",
    "DriftReport",
    "MonitorStore",
    "Performance",
    "ReferenceInfo",
    "RolloutStepRecord",
    "Verdict",
]

MIGRATIONS = Path(__file__).parent / "migrations"


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
    def __init__(self, root: Path, database_url: str = "") -> None:
        """The store at `database_url` (SQLAlchemy URL), by default the SQLite file
        `root`/monitor.sqlite3, which a store from before migrations also used."""
        url = database_url or database.sqlite_url(root / "monitor.sqlite3")
        if not database_url:
            root.mkdir(parents=True, exist_ok=True)
        self.engine = database.engine(url, writer=True)
        self.reader = database.engine(url, writer=False) if url.startswith("sqlite") else self.engine
        database.migrate(self.engine, MIGRATIONS)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.reader.dispose()
        self.engine.dispose()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as connection:
            yield connection

    def _read(self) -> sa.Connection:
        return self.reader.connect()

    # -- references ----------------------------------------------------------------------------
    def save_reference(self, info: ReferenceInfo) -> None:
        values = {
            "model_version": info.model_version,
            "dataset": info.dataset,
            "dataset_version": info.dataset_version,
            "features_json": json.dumps(info.features),
            "rows": info.rows,
        }
        with self._transaction() as db:
            db.execute(
                database.insert(db, tables.reference_datasets)
                .values(model=info.model, **values)
                .on_conflict_do_update(index_elements=["model"], set_=values)
            )

    def reference(self, model: str) -> ReferenceInfo | None:
        r = tables.reference_datasets
        with self._read() as db:
            row = db.execute(
                sa.select(
                    r.c.model_version, r.c.dataset, r.c.dataset_version, r.c.features_json, r.c.rows
                ).where(r.c.model == model)
            ).first()
        if row is None:
            return None
        return ReferenceInfo(model, int(row[0]), row[1], row[2], tuple(json.loads(row[3])), int(row[4]))

    # -- reports -------------------------------------------------------------------------------
    def save_report(self, report: DriftReport) -> None:
        """Replace the model's latest report and append its verdict to the history, atomically."""
        text = _report_to_json(report)
        with self._transaction() as db:
            db.execute(
                database.insert(db, tables.latest_reports)
                .values(model=report.model, report_json=text)
                .on_conflict_do_update(index_elements=["model"], set_={"report_json": text})
            )
            db.execute(
                tables.verdicts.insert().values(
                    model=report.model,
                    computed_at=report.computed_at.isoformat(),
                    model_version=report.model_version,
                    reference_dataset=report.reference_dataset,
                    reference_dataset_version=report.reference_dataset_version,
                    window_size=report.window_size,
                    predictions_seen=report.predictions_seen,
                    dataset_drifted=report.dataset_drifted,
                    drifted_features_json=json.dumps(report.drifted_features),
                    features_json=json.dumps([_without_distribution(feature) for feature in report.features]),
                    prediction_json=(
                        json.dumps(_without_distribution(report.prediction)) if report.prediction else None
                    ),
                )
            )

    def update_performance(self, model: str, performance: Performance) -> None:
        """Put a newer decay measurement into the model's latest report. The report is read and
        written back under its row's lock, so a report another replica saves meanwhile is not
        overwritten by the older one."""
        latest = tables.latest_reports
        with self._transaction() as db:
            text = db.execute(
                sa.select(latest.c.report_json).where(latest.c.model == model).with_for_update()
            ).scalar_one_or_none()
            if text is None:
                return
            report = dataclasses.replace(_report_from_json(text), performance=performance)
            db.execute(
                latest.update().where(latest.c.model == model).values(report_json=_report_to_json(report))
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
        with self._transaction() as db:
            db.execute(
                database.insert(db, tables.drift_events)
                .values(
                    model=model,
                    event_id=event_id,
                    kind=kind,
                    model_version=model_version,
                    summary=summary,
                    emitted_at=emitted_at.isoformat(),
                    triggered=triggered,
                    emitted=emitted,
                )
                .on_conflict_do_nothing(index_elements=["event_id"])
            )

    def drift_events(
        self, model: str, limit: int = 100, *, emitted_only: bool = False
    ) -> list[DriftEventRecord]:
        """The model's drift events, newest first: the emitted ones only, or the held-back ones too."""
        e = tables.drift_events
        query = sa.select(
            e.c.event_id, e.c.kind, e.c.model_version, e.c.summary, e.c.emitted_at, e.c.triggered, e.c.emitted
        ).where(e.c.model == model)
        if emitted_only:
            query = query.where(e.c.emitted == sa.true())
        with self._read() as db:
            rows = db.execute(query.order_by(e.c.emitted_at.desc(), e.c.id.desc()).limit(limit)).all()
        return [
            DriftEventRecord(r[0], r[1], int(r[2]), r[3], datetime.fromisoformat(r[4]), r[5], bool(r[6]))
            for r in rows
        ]

    def latest_report(self, model: str) -> DriftReport | None:
        latest = tables.latest_reports
        with self._read() as db:
            text = db.execute(
                sa.select(latest.c.report_json).where(latest.c.model == model)
            ).scalar_one_or_none()
        return _report_from_json(text) if text is not None else None

    def verdicts(self, model: str, limit: int = 100) -> list[Verdict]:
        """The model's most recent verdicts, newest first."""
        v = tables.verdicts
        with self._read() as db:
            rows = db.execute(
                sa.select(
                    v.c.model_version,
                    v.c.reference_dataset_version,
                    v.c.window_size,
                    v.c.predictions_seen,
                    v.c.dataset_drifted,
                    v.c.drifted_features_json,
                    v.c.computed_at,
                    v.c.features_json,
                    v.c.prediction_json,
                )
                .where(v.c.model == model)
                .order_by(v.c.computed_at.desc(), v.c.id.desc())
                .limit(limit)
            ).all()
        return [
            Verdict(
                int(row[0]),
                row[1],
                int(row[2]),
                int(row[3]),
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
        values = {
            "challenger_version": record.challenger_version,
            "step": record.step,
            "step_started_at": record.step_started_at.isoformat(),
            "evidence_json": record.evidence_json,
            "updated_at": record.updated_at.isoformat(),
        }
        with self._transaction() as db:
            db.execute(
                database.insert(db, tables.rollout_steps)
                .values(model=record.model, **values)
                .on_conflict_do_update(index_elements=["model"], set_=values)
            )

    def rollout_step(self, model: str) -> RolloutStepRecord | None:
        found = self._rollout_steps(tables.rollout_steps.c.model == model)
        return found[0] if found else None

    def rollout_steps(self) -> list[RolloutStepRecord]:
        """Every model's recorded rollout step (to resume them at start-up)."""
        return self._rollout_steps(sa.true())

    def _rollout_steps(self, condition: sa.ColumnElement[bool]) -> list[RolloutStepRecord]:
        r = tables.rollout_steps
        with self._read() as db:
            rows = db.execute(sa.select(r).where(condition).order_by(r.c.model)).mappings().all()
        return [
            RolloutStepRecord(
                row["model"],
                int(row["challenger_version"]),
                int(row["step"]),
                datetime.fromisoformat(row["step_started_at"]),
                row["evidence_json"],
                datetime.fromisoformat(row["updated_at"]),
            )
            for row in rows
        ]


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
