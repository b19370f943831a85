"""The monitor's tables, as SQLAlchemy Core metadata. Alembic migrations create and evolve them
(services/monitor/migrations); a test checks that the migrations and this metadata agree.

Times are ISO-8601 UTC text, as the first (sqlite3) store wrote them: its files open unchanged, and
text of one format sorts chronologically on both databases.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "awaiting_labels",
    "drift_events",
    "labelled_rows",
    "latest_reports",
    "metadata",
    "model_states",
    "reference_datasets",
    "rollout_steps",
    "verdicts",
    "window_rows",
]

metadata = sa.MetaData()

# Each model's current reference: the dataset version its champion was trained on.
reference_datasets = sa.Table(
    "reference_datasets",
    metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("dataset_version", sa.Text, nullable=False),
    sa.Column("features_json", sa.Text, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
)

# Each model's latest drift report, whole (JSON); replaced by the next, changed in place only by a
# newer decay measurement (under the row's lock).
latest_reports = sa.Table(
    "latest_reports",
    metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("report_json", sa.Text, nullable=False),
)

# Append-only: one line per report. id orders lines written in the same instant.
verdicts = sa.Table(
    "verdicts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("computed_at", sa.Text, nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("reference_dataset", sa.Text, nullable=False),
    sa.Column("reference_dataset_version", sa.Text, nullable=False),
    sa.Column("window_size", sa.Integer, nullable=False),
    sa.Column("predictions_seen", sa.BigInteger, nullable=False),
    sa.Column("dataset_drifted", sa.Boolean, nullable=False),
    sa.Column("drifted_features_json", sa.Text, nullable=False),
    # NULL on lines written before verdicts kept every feature's test.
    sa.Column("features_json", sa.Text, nullable=True),
    sa.Column("prediction_json", sa.Text, nullable=True),
    sa.Index("verdicts_by_model", "model", "computed_at"),
)

# Every time the rule said "act": emitted, or held back (emitted false) with what that triggered.
drift_events = sa.Table(
    "drift_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.Text, nullable=False, unique=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("emitted_at", sa.Text, nullable=False),
    sa.Column("triggered", sa.Text, nullable=False, server_default=""),
    sa.Column("emitted", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Index("drift_events_by_model", "model", "emitted_at"),
)

# One per model: the evidence its running rollout gathered in the current step.
rollout_steps = sa.Table(
    "rollout_steps",
    metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("challenger_version", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("step_started_at", sa.Text, nullable=False),
    sa.Column("evidence_json", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
)

# Row ids of the tables the monitor appends to hundreds of times a second: 64 bits on PostgreSQL
# (2^31 rows last weeks there), SQLite's rowid on SQLite.
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One per model: what decides, shared by every replica on the database and kept over restarts. The
# window's version and width, rows since the last evaluation, rows in all, the drift streak, the
# last emitted *drift detected* (epoch seconds, the cooldown), labelled rows since the last decay
# measurement, and where the labelled window and the unsent feedback start (labelled_rows ids).
model_states = sa.Table(
    "model_states",
    metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("window_version", sa.Integer, nullable=True),
    sa.Column("window_width", sa.Integer, nullable=True),
    sa.Column("pending", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("seen", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("consecutive_drifted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_emitted", sa.Float, nullable=True),
    sa.Column("labels_pending", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("labelled_after", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("feedback_after", sa.BigInteger, nullable=False, server_default="0"),
    # When a decision held back was last recorded, by kind (recorded once per cooldown period).
    sa.Column("held_back_drift", sa.Float, nullable=True),
    sa.Column("held_back_decay", sa.Float, nullable=True),
)

# The champion's window: its latest prediction rows, oldest first by id, trimmed to the window size.
# A row's features are little-endian float64s; NULL prediction or confidence when not logged.
window_rows = sa.Table(
    "window_rows",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("features", sa.LargeBinary, nullable=False),
    sa.Column("prediction", sa.Float, nullable=True),
    sa.Column("confidence", sa.Float, nullable=True),
    sa.Index("window_rows_by_model", "model", "id"),
)

# Logged requests not labelled yet, by request id, oldest dropped past the policy's bound: the
# predictions, confidences (NaN when not logged) and inputs, float64 bytes.
awaiting_labels = sa.Table(
    "awaiting_labels",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("predictions", sa.LargeBinary, nullable=False),
    sa.Column("confidences", sa.LargeBinary, nullable=False),
    sa.Column("inputs", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("model", "request_id", name="awaiting_labels_by_request"),
    sa.Index("awaiting_labels_by_model", "model", "id"),
)

# Predictions joined with their ground truth, oldest first by id: the decay window (after
# model_states.labelled_after) and the feedback not sent yet (after feedback_after).
labelled_rows = sa.Table(
    "labelled_rows",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("prediction", sa.Float, nullable=False),
    sa.Column("truth", sa.Float, nullable=False),
    sa.Column("confidence", sa.Float, nullable=True),
    sa.Column("features", sa.LargeBinary, nullable=False),
    sa.Index("labelled_rows_by_model", "model", "id"),
)
