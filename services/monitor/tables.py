"""The monitor's tables, as SQLAlchemy Core metadata. Alembic migrations create and evolve them
(services/monitor/migrations); a test checks that the migrations and this metadata agree.

Times are ISO-8601 UTC text, as the first (sqlite3) store wrote them: its files open unchanged, and
text of one format sorts chronologically on both databases.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["drift_events", "latest_reports", "metadata", "reference_datasets", "rollout_steps", "verdicts"]

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
