"""The monitor's own store: each model's current reference, its latest drift report, the history of
every verdict and drift decision, and its rollout's step. SQLite (WAL) by default, PostgreSQL by URL,
both through SQLAlchemy Core with Alembic migrations (services/monitor/migrations), which adopt a file
written by the first sqlite3 store with its rows. Reports survive restarts and name the reference
they used; the reference data itself is not kept here, since ingest serves it again on demand.

Replicas may share one PostgreSQL database: every write is one transaction, keyed rows are upserted,
and the read-modify-writes hold a row's lock while they do it: a newer decay measurement into the
latest report, and every change to a model's shared state (its window, streak, cooldown, requests
awaiting labels and labelled rows), which locks the model's state row first. Rows written before
columns were added have them empty: a verdict without its per-feature tests, an event without what
it triggered (those were all emitted)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray

from cascade import database
from cascade.services.monitor import tables
from cascade.services.monitor.attribution import AttributionShift
from cascade.services.monitor.drift import Distribution, FeatureDrift

__all__ = [
    "MIGRATIONS",
    "DriftEventRecord",
    "DriftReport",
    "LabelBatch",
    "LabelJoin",
    "ModelState",
    "MonitorStore",
    "Performance",
    "PredictionBatch",
    "ReferenceInfo",
    "RolloutStepRecord",
    "Verdict",
    "WindowAppend",
    "WindowRows",
]

MIGRATIONS = Path(__file__).parent / "migrations"

Matrix = NDArray[np.float64]


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


@dataclass(frozen=True)
class ModelState:
    """What decides for a model, shared by the replicas on one database (see tables.model_states)."""

    window_version: int | None = None
    window_width: int | None = None
    pending: int = 0
    seen: int = 0
    consecutive_drifted: int = 0
    last_emitted: float | None = None
    labels_pending: int = 0


@dataclass(frozen=True)
class WindowRows:
    """The window's rows oldest first, with each row's prediction and confidence (NaN when none)."""

    rows: Matrix
    outputs: Matrix
    confidences: Matrix


@dataclass(frozen=True)
class WindowAppend:
    """What appending a batch decided: rows in all, and the window when this batch made an
    evaluation due (claimed by this append alone: the count of pending rows starts again); whether
    its rows were counted (not when another version than the stored champion answered them), and
    the stored champion's version (None before any)."""

    seen: int
    due: WindowRows | None
    counted: bool = True
    champion: int | None = None


@dataclass(frozen=True)
class PredictionBatch:
    """One logged batch for the window: its rows, their predictions and confidences (None: not
    logged), the version that answered them (None: not said), whether it counts towards an
    evaluation (not before a reference), and the request id to remember it under for labels to
    come, with how many requests to remember at most."""

    rows: Matrix
    outputs: Matrix | None = None
    confidences: Matrix | None = None
    model_version: int | None = None
    evaluates: bool = True
    remember: tuple[str, int] | None = None


@dataclass(frozen=True)
class LabelBatch:
    """Ground truth for the rows of one request, in their order."""

    request_id: str
    truth: Matrix


@dataclass(frozen=True)
class LabelJoin:
    """Labels joined with a remembered request: `rows` it had; `due` when the labels pending reached
    the minimum (claimed: the count starts again). A mismatch in rows leaves the request remembered."""

    rows: int
    joined: bool
    due: bool = False


class MonitorStore:
    def __init__(self, root: Path, database_url: str = "", sync_each_commit: bool = True) -> None:
        """The store at `database_url` (SQLAlchemy URL), by default the SQLite file
        `root`/monitor.sqlite3, which a store from before migrations also used. The service opens it
        without `sync_each_commit` (MonitorSettings.database_sync_each_commit, cascade.database.engine
        says what that risks)."""
        url = database_url or database.sqlite_url(root / "monitor.sqlite3")
        if not database_url:
            root.mkdir(parents=True, exist_ok=True)
        self.engine = database.engine(url, writer=True, sync_each_commit=sync_each_commit)
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
        with self._transaction() as db:
            self._save_report(db, report)

    def _save_report(self, db: sa.Connection, report: DriftReport) -> None:
        text = _report_to_json(report)
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

    # -- shared model state: the window, the streak, the cooldown, labels ------------------------
    # Every change locks the model's state row first (FOR UPDATE on PostgreSQL; SQLite's writers
    # hold the database's write lock from BEGIN), so replicas take turns per model.
    def _locked_state(self, db: sa.Connection, model: str) -> sa.RowMapping:
        s = tables.model_states
        locked = sa.select(s).where(s.c.model == model).with_for_update()
        row = db.execute(locked).mappings().first()
        if row is not None:  # the common case: one statement
            return row
        db.execute(
            database.insert(db, s)
            .values(model=model, **self._carried_over(db, model))
            .on_conflict_do_nothing(index_elements=["model"])
        )
        return db.execute(locked).mappings().one()

    def _carried_over(self, db: sa.Connection, model: str) -> dict[str, Any]:
        """A model's first state row, in a store written before it had one: the rows seen, as its
        latest report counted them, and the cooldown from its latest emitted event."""
        latest, e = tables.latest_reports, tables.drift_events
        text = db.execute(sa.select(latest.c.report_json).where(latest.c.model == model)).scalar()
        emitted = db.execute(
            sa.select(e.c.emitted_at)
            .where(e.c.model == model, e.c.emitted == sa.true())
            .order_by(e.c.emitted_at.desc())
            .limit(1)
        ).scalar()
        return {
            "seen": json.loads(text)["predictions_seen"] if text else 0,
            "last_emitted": datetime.fromisoformat(emitted).timestamp() if emitted else None,
        }

    def model_state(self, model: str) -> ModelState:
        s = tables.model_states
        with self._read() as db:
            row = db.execute(sa.select(s).where(s.c.model == model)).mappings().first()
        return _model_state(row) if row is not None else ModelState()

    def install_reference(self, info: ReferenceInfo) -> None:
        """Make `info` the model's reference. A new champion is judged on its own answers: a fresh
        window unless the rows held came before any reference, answered by it (or unversioned) and as
        wide; a fresh
        streak; and, after another champion, no labels of that one's answers (its feedback stays)."""
        s, w, a, lab = tables.model_states, tables.window_rows, tables.awaiting_labels, tables.labelled_rows
        r = tables.reference_datasets
        with self._transaction() as db:
            state = self._locked_state(db, info.model)
            previous = db.execute(
                sa.select(r.c.model_version).where(r.c.model == info.model)
            ).scalar_one_or_none()
            if previous == info.model_version:
                return
            values = {
                "model_version": info.model_version,
                "dataset": info.dataset,
                "dataset_version": info.dataset_version,
                "features_json": json.dumps(info.features),
                "rows": info.rows,
            }
            db.execute(
                database.insert(db, r)
                .values(model=info.model, **values)
                .on_conflict_do_update(index_elements=["model"], set_=values)
            )
            changes: dict[str, Any] = {
                "consecutive_drifted": 0,
                "window_version": info.model_version,
                "window_width": len(info.features),
            }
            keep_window = (
                previous is None
                and state["window_version"] in (None, info.model_version)
                and state["window_width"] in (None, len(info.features))
            )
            if not keep_window:
                db.execute(w.delete().where(w.c.model == info.model))
                changes["pending"] = 0
            if previous is not None:
                last = db.execute(sa.select(sa.func.max(lab.c.id)).where(lab.c.model == info.model)).scalar()
                changes.update(labels_pending=0, labelled_after=last or 0)
                db.execute(a.delete().where(a.c.model == info.model))
            db.execute(s.update().where(s.c.model == info.model).values(**changes))

    def append_window(
        self,
        model: str,
        model_version: int | None,
        rows: Matrix,
        outputs: Matrix | None,
        confidences: Matrix | None,
        *,
        window_size: int,
        evaluate_every: int,
        at: float,
        evaluates: bool = True,
        since: float | None = None,
        remember: tuple[str, int] | None = None,
    ) -> WindowAppend:
        """One batch's append_windows."""
        batch = PredictionBatch(rows, outputs, confidences, model_version, evaluates, remember)
        [appended] = self.append_windows(
            model, [batch], window_size=window_size, evaluate_every=evaluate_every, at=at, since=since
        )
        return appended

    def append_windows(
        self,
        model: str,
        batches: Sequence[PredictionBatch],
        *,
        window_size: int,
        evaluate_every: int,
        at: float,
        since: float | None = None,
    ) -> list[WindowAppend]:
        """Append batches, in order, to the model's window (a fresh one from a batch another version
        answered, or of another width), trimmed to `window_size`; remember each batch under its
        request id for labels to come (the oldest requests dropped past the bound, up to a sixteenth
        more between trims). One transaction
        with one insert per table (executemany), whatever the number of batches. Rows answered by a
        version other than the stored champion are not counted (`counted` False). When a batch that
        `evaluates` brings the rows pending to `evaluate_every`, the evaluation is claimed (the count
        starts again) and goes to the last such batch: the window since `since` after them all."""
        if not batches:
            return []
        s, w, r = tables.model_states, tables.window_rows, tables.reference_datasets
        with self._transaction() as db:
            state = self._locked_state(db, model)
            champion = db.execute(sa.select(r.c.model_version).where(r.c.model == model)).scalar_one_or_none()
            version, width = state["window_version"], state["window_width"]
            pending, seen = int(state["pending"]), int(state["seen"])
            fresh = False  # the stored window is replaced
            window: list[dict[str, Any]] = []
            requests: dict[str, list[PredictionBatch]] = {}
            outcomes: list[tuple[int, bool]] = []  # per batch: rows seen after it, counted
            claimed: int | None = None  # the batch the evaluation goes to
            for index, batch in enumerate(batches):
                if champion is not None and batch.model_version not in (None, champion):
                    outcomes.append((seen, False))
                    continue
                if (batch.model_version is not None and version != batch.model_version) or width not in (
                    None,
                    batch.rows.shape[1],
                ):
                    fresh, window, pending = True, [], 0
                version = version if batch.model_version is None else batch.model_version
                width = batch.rows.shape[1]
                window.extend(_window_rows(model, batch, window_size, at))
                del window[:-window_size]
                pending += len(batch.rows)
                seen += len(batch.rows)
                if batch.evaluates and pending >= evaluate_every:
                    claimed, pending = index, 0
                if batch.remember is not None and batch.outputs is not None:
                    requests.setdefault(batch.remember[0], []).append(batch)
                outcomes.append((seen, True))
            if fresh:
                db.execute(w.delete().where(w.c.model == model))
            if window:
                db.execute(w.insert(), window)
                _trim(db, w, model, window_size)
            if requests:
                limit = max(b.remember[1] for b in batches if b.remember)
                # Trimmed once every `limit // 16` rows seen (each request has one at least), not
                # at every append: finding the oldest kept walks `limit` index entries.
                trims = _crosses(int(state["seen"]), seen, _trim_stride(limit))
                self._remember(db, model, requests, limit if trims else None)
            db.execute(
                s.update()
                .where(s.c.model == model)
                .values(pending=pending, seen=seen, window_width=width, window_version=version)
            )
            due = self._window(db, model, since) if claimed is not None else None
        return [
            WindowAppend(rows_seen, due if index == claimed else None, counted=counted, champion=champion)
            for index, (rows_seen, counted) in enumerate(outcomes)
        ]

    def claim_evaluation(self, model: str, evaluate_every: int, since: float | None = None) -> WindowAppend:
        """The window since `since` when `evaluate_every` rows are pending, claimed (the count starts
        again); else no window."""
        s = tables.model_states
        with self._transaction() as db:
            state = self._locked_state(db, model)
            if int(state["pending"]) < evaluate_every:
                return WindowAppend(int(state["seen"]), None)
            db.execute(s.update().where(s.c.model == model).values(pending=0))
            return WindowAppend(int(state["seen"]), self._window(db, model, since))

    def window_confidences(self, model: str) -> Matrix:
        """The confidences logged with the window's rows, oldest first (none for rows without)."""
        w = tables.window_rows
        with self._read() as db:
            found = db.execute(
                sa.select(w.c.confidence)
                .where(w.c.model == model, w.c.confidence.is_not(None))
                .order_by(w.c.id)
            ).scalars()
            return np.array(list(found), dtype=np.float64)

    def window(self, model: str, since: float | None = None) -> WindowRows:
        with self._read() as db:
            return self._window(db, model, since)

    def _window(self, db: sa.Connection, model: str, since: float | None = None) -> WindowRows:
        w, s = tables.window_rows, tables.model_states
        width = db.execute(sa.select(s.c.window_width).where(s.c.model == model)).scalar_one_or_none()
        query = sa.select(w.c.features, w.c.prediction, w.c.confidence).where(w.c.model == model)
        if since is not None:
            query = query.where(w.c.at >= since)
        found = db.execute(query.order_by(w.c.id)).all()
        rows = _matrix([row[0] for row in found], width or 0)
        return WindowRows(rows, _numbers(row[1] for row in found), _numbers(row[2] for row in found))

    def _remember(
        self,
        db: sa.Connection,
        model: str,
        requests: Mapping[str, Sequence[PredictionBatch]],
        limit: int | None,
    ) -> None:
        """Remember each request's batches (a request logged in chunks: its rows in order, after
        those remembered already; chunks of another width than its last are dropped), one select,
        one delete and one insert for them all; then keep the newest `limit` requests, if given."""
        a = tables.awaiting_labels
        previous = db.execute(
            sa.select(a.c.id, a.c.request_id, a.c.predictions, a.c.confidences, a.c.inputs, a.c.width).where(
                a.c.model == model, a.c.request_id.in_(list(requests))
            )
        ).all()
        earlier = {row[1]: row for row in previous}
        if previous:
            db.execute(a.delete().where(a.c.id.in_([row[0] for row in previous])))
        remembered = []
        for request_id, chunks in requests.items():
            width = chunks[-1].rows.shape[1]
            kept = [chunk for chunk in chunks if chunk.rows.shape[1] == width]  # a request is one width
            # Float64 bytes concatenate as the arrays would: no arrays to build for the blobs.
            predictions = [_blob(chunk.outputs) for chunk in kept if chunk.outputs is not None]
            confidences = [_blob(_confidences_of(chunk)) for chunk in kept]
            inputs = [_blob(chunk.rows) for chunk in kept]
            row = earlier.get(request_id)
            if row is not None and int(row[5]) == width:
                predictions.insert(0, row[2])
                confidences.insert(0, row[3])
                inputs.insert(0, row[4])
            remembered.append(
                {
                    "model": model,
                    "request_id": request_id,
                    "width": width,
                    "predictions": b"".join(predictions),
                    "confidences": b"".join(confidences),
                    "inputs": b"".join(inputs),
                }
            )
        db.execute(a.insert(), remembered)
        if limit is not None:
            _trim(db, a, model, limit)

    def join_labels(
        self, model: str, request_id: str, truth: Matrix, *, min_labels: int, keep: int, counts: bool
    ) -> LabelJoin:
        """One request's join_labels_many."""
        [joined] = self.join_labels_many(
            model, [LabelBatch(request_id, truth)], min_labels=min_labels, keep=keep, counts=counts
        )
        return joined

    def join_labels_many(
        self, model: str, labels: Sequence[LabelBatch], *, min_labels: int, keep: int, counts: bool
    ) -> list[LabelJoin]:
        """Join each request's truth, in order, with the predictions remembered under its request id
        (by any replica) into the labelled rows, of which the newest `keep` are kept (up to a
        sixteenth more between trims); count them
        towards the next decay measurement, due at `min_labels` when `counts` and claimed (the count
        starts again) by the last request that made it due. A request is joined once; a mismatch in
        rows leaves it remembered. One transaction, one statement per step for them all."""
        if not labels:
            return []
        s, a, lab = tables.model_states, tables.awaiting_labels, tables.labelled_rows
        with self._transaction() as db:
            state = self._locked_state(db, model)
            found = {
                row[0]: row
                for row in db.execute(
                    sa.select(
                        a.c.request_id, a.c.id, a.c.predictions, a.c.confidences, a.c.inputs, a.c.width
                    ).where(a.c.model == model, a.c.request_id.in_({label.request_id for label in labels}))
                ).all()
            }
            joins: list[LabelJoin] = []
            joined_ids: list[int] = []
            labelled: list[dict[str, Any]] = []
            pending, claimed = int(state["labels_pending"]), None
            for index, label in enumerate(labels):
                row = found.get(label.request_id)
                if row is None:
                    joins.append(LabelJoin(0, joined=False))
                    continue
                predicted, confidences = _vector(row[2]), _vector(row[3])
                if len(predicted) != len(label.truth):
                    joins.append(LabelJoin(len(predicted), joined=False))
                    continue
                del found[label.request_id]  # joined once
                joined_ids.append(row[1])
                inputs = _matrix([row[4]], int(row[5]))
                labelled.extend(
                    {
                        "model": model,
                        "prediction": float(p),
                        "truth": float(t),
                        "confidence": _number(c),
                        "features": _blob(features),
                    }
                    for p, t, c, features in zip(predicted, label.truth, confidences, inputs, strict=True)
                )
                pending += len(label.truth)
                if counts and pending >= min_labels:
                    claimed, pending = index, 0
                joins.append(LabelJoin(len(predicted), joined=True))
            if joined_ids:
                db.execute(a.delete().where(a.c.id.in_(joined_ids)))
                db.execute(lab.insert(), labelled)
                # Trimmed at a measurement claimed or every `keep // 16` rows pending, not at every
                # join: finding the oldest kept walks `keep` index entries.
                if claimed is not None or _crosses(int(state["labels_pending"]), pending, _trim_stride(keep)):
                    _trim(db, lab, model, keep)
                db.execute(s.update().where(s.c.model == model).values(labels_pending=pending))
        if claimed is not None:
            joins[claimed] = dataclasses.replace(joins[claimed], due=True)
        return joins

    def labelled(self, model: str, limit: int) -> Matrix:
        """The newest `limit` labelled rows of the current champion, oldest first: (prediction,
        truth, confidence) each."""
        lab, s = tables.labelled_rows, tables.model_states
        found = self._newest_labelled(
            model, s.c.labelled_after, (lab.c.prediction, lab.c.truth, lab.c.confidence), limit
        )
        values = np.array([(r[0], r[1], np.nan if r[2] is None else r[2]) for r in found], dtype=np.float64)
        return values.reshape(-1, 3)

    def feedback(self, model: str, limit: int) -> tuple[Matrix, Matrix, int]:
        """Labelled rows not sent as feedback yet, the newest `limit` oldest first: inputs, labels,
        and the id to pass to `feedback_sent` once they are."""
        lab, s = tables.labelled_rows, tables.model_states
        found = self._newest_labelled(
            model, s.c.feedback_after, (lab.c.id, lab.c.features, lab.c.truth), limit
        )
        width = len(found[0][1]) // 8 if found else 0
        inputs = _matrix([row[1] for row in found], width)
        return inputs, np.array([row[2] for row in found], dtype=np.float64), found[-1][0] if found else 0

    def _newest_labelled(
        self, model: str, marker: sa.Column[Any], columns: tuple[sa.Column[Any], ...], limit: int
    ) -> list[Any]:
        """The newest `limit` labelled rows of `model` after its state row's `marker` (a labelled
        row id), oldest first."""
        lab = tables.labelled_rows
        after = sa.select(marker).where(tables.model_states.c.model == model).scalar_subquery()
        with self._read() as db:
            found = db.execute(
                sa.select(*columns)
                .where(lab.c.model == model, lab.c.id > sa.func.coalesce(after, 0))
                .order_by(lab.c.id.desc())
                .limit(limit)
            ).all()
        return list(reversed(found))

    def feedback_sent(self, model: str, through: int) -> None:
        s = tables.model_states
        with self._transaction() as db:
            self._locked_state(db, model)
            db.execute(
                s.update()
                .where(s.c.model == model, s.c.feedback_after < through)
                .values(feedback_after=through)
            )

    def save_verdict(self, report: DriftReport) -> int | None:
        """Save the report (see save_report) and count it in the model's drift streak, in one
        transaction; the streak after it. None, and nothing saved, when the report is on a window of
        a champion another replica has replaced meanwhile."""
        s = tables.model_states
        with self._transaction() as db:
            state = self._locked_state(db, report.model)
            if state["window_version"] not in (None, report.model_version):
                return None
            self._save_report(db, report)
            streak = int(state["consecutive_drifted"]) + 1 if report.dataset_drifted else 0
            db.execute(s.update().where(s.c.model == report.model).values(consecutive_drifted=streak))
            return streak

    def claim_emission(self, model: str, now: float, cooldown: float) -> tuple[bool, float | None]:
        """Claim the right to emit *drift detected* unless one was emitted within `cooldown`
        seconds of `now` (by any replica): (claimed, the previous emission's time). A claim ends
        the streak."""
        s = tables.model_states
        with self._transaction() as db:
            state = self._locked_state(db, model)
            last = state["last_emitted"]
            if last is not None and now - float(last) < cooldown:
                return False, float(last)
            db.execute(s.update().where(s.c.model == model).values(last_emitted=now, consecutive_drifted=0))
            return True, None if last is None else float(last)

    def save_held_back(
        self, model: str, kind: str, model_version: int, summary: str, now: float, spacing: float, why: str
    ) -> bool:
        """Record a decision of `kind` ("drift" or "decay") that emitted nothing, unless one was
        recorded within `spacing` seconds (by any replica); whether it was."""
        s = tables.model_states
        column = s.c.held_back_decay if kind == "decay" else s.c.held_back_drift
        with self._transaction() as db:
            last = self._locked_state(db, model)[column.name]
            if last is not None and now - float(last) < spacing:
                return False
            db.execute(s.update().where(s.c.model == model).values({column: now}))
            db.execute(
                tables.drift_events.insert().values(
                    model=model,
                    event_id=str(uuid.uuid4()),
                    kind=kind,
                    model_version=model_version,
                    summary=summary,
                    emitted_at=datetime.fromtimestamp(now, UTC).isoformat(),
                    triggered=why,
                    emitted=False,
                )
            )
            return True

    def release_emission(self, model: str, claimed: float, previous: float | None) -> None:
        """Give back a claim whose event could not be emitted (unless a newer claim replaced it)."""
        s = tables.model_states
        with self._transaction() as db:
            self._locked_state(db, model)
            db.execute(
                s.update()
                .where(s.c.model == model, s.c.last_emitted == claimed)
                .values(last_emitted=previous)
            )


def _window_rows(model: str, batch: PredictionBatch, window_size: int, at: float) -> list[dict[str, Any]]:
    """The window's rows of a batch (its newest `window_size`): features, prediction, confidence."""
    kept = slice(-window_size, None)
    predicted = np.full(len(batch.rows), np.nan) if batch.outputs is None else batch.outputs
    return [
        {"model": model, "at": at, "features": _blob(row), "prediction": _number(p), "confidence": _number(c)}
        for row, p, c in zip(batch.rows[kept], predicted[kept], _confidences_of(batch)[kept], strict=True)
    ]


def _confidences_of(batch: PredictionBatch) -> Matrix:
    return np.full(len(batch.rows), np.nan) if batch.confidences is None else batch.confidences


def _model_state(row: sa.RowMapping) -> ModelState:
    return ModelState(
        window_version=row["window_version"],
        window_width=row["window_width"],
        pending=int(row["pending"]),
        seen=int(row["seen"]),
        consecutive_drifted=int(row["consecutive_drifted"]),
        last_emitted=None if row["last_emitted"] is None else float(row["last_emitted"]),
        labels_pending=int(row["labels_pending"]),
    )


def _trim(db: sa.Connection, table: sa.Table, model: str, keep: int) -> None:
    """Delete the model's rows older than its newest `keep` (ids grow with time)."""
    oldest_kept = (
        sa.select(table.c.id)
        .where(table.c.model == model)
        .order_by(table.c.id.desc())
        .offset(keep - 1)
        .limit(1)
        .scalar_subquery()
    )
    db.execute(table.delete().where(table.c.model == model, table.c.id < oldest_kept))


def _trim_stride(keep: int) -> int:
    """Rows between two trims of a table bounded to `keep`: it holds at most this many more."""
    return max(1, keep // 16)


def _crosses(before: int, after: int, stride: int) -> bool:
    """Whether a count going from `before` to `after` passed a multiple of `stride`."""
    return before // stride != after // stride


def _blob(values: Matrix) -> bytes:
    return np.ascontiguousarray(values, dtype="<f8").tobytes()


def _vector(blob: bytes) -> Matrix:
    return np.frombuffer(blob, dtype="<f8").astype(np.float64)


def _matrix(blobs: list[bytes], width: int) -> Matrix:
    if not blobs:
        return np.empty((0, width))
    return np.frombuffer(b"".join(blobs), dtype="<f8").astype(np.float64).reshape(-1, width)


def _number(value: float) -> float | None:
    """SQLite keeps NaN as NULL: store it so on both databases."""
    return None if math.isnan(value) else float(value)


def _numbers(values: Iterator[float | None]) -> Matrix:
    return np.array([np.nan if value is None else value for value in values], dtype=np.float64)


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
