"""Initial schema: references, latest reports, verdicts, drift events and rollout steps.

A store written before migrations (by the sqlite3 store, which created its tables itself) is
adopted with its rows: tables it lacks are created, and verdicts and drift events, which had only
SQLite's implicit rowid to order lines of one instant, are copied into tables with an id (the rowid,
so the order stays), filling the columns added since their first schema as the old store read them
(no per-feature tests, an emitted event that triggered nothing recorded).

Revision ID: 0001
Revises:
Created: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Columns of the adopted tables, and what fills one an old file lacks.
_VERDICT_COLUMNS = {
    "model": None,
    "computed_at": None,
    "model_version": None,
    "reference_dataset": None,
    "reference_dataset_version": None,
    "window_size": None,
    "predictions_seen": None,
    "dataset_drifted": None,
    "drifted_features_json": None,
    "features_json": "NULL",
    "prediction_json": "NULL",
}
_DRIFT_EVENT_COLUMNS = {
    "event_id": None,
    "model": None,
    "kind": None,
    "model_version": None,
    "summary": None,
    "emitted_at": None,
    "triggered": "''",
    "emitted": "1",
}


def _verdicts(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("computed_at", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("reference_dataset", sa.Text(), nullable=False),
        sa.Column("reference_dataset_version", sa.Text(), nullable=False),
        sa.Column("window_size", sa.Integer(), nullable=False),
        sa.Column("predictions_seen", sa.BigInteger(), nullable=False),
        sa.Column("dataset_drifted", sa.Boolean(), nullable=False),
        sa.Column("drifted_features_json", sa.Text(), nullable=False),
        sa.Column("features_json", sa.Text(), nullable=True),
        sa.Column("prediction_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def _drift_events(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("emitted_at", sa.Text(), nullable=False),
        sa.Column("triggered", sa.Text(), server_default="", nullable=False),
        sa.Column("emitted", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )


def _adopt(table: str, create: Callable[[str], None], columns: dict[str, str | None]) -> None:
    """Copy an old SQLite table into one of the new shape, its rowid becoming the id."""
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns(table)}
    create(f"{table}_adopted")
    names = ", ".join(columns)
    values = ", ".join(name if name in present else str(fill) for name, fill in columns.items())
    op.execute(f"INSERT INTO {table}_adopted (id, {names}) SELECT rowid, {values} FROM {table}")
    op.drop_table(table)
    op.rename_table(f"{table}_adopted", table)


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = set(inspector.get_table_names())
    if "reference_datasets" not in present:
        op.create_table(
            "reference_datasets",
            sa.Column("model", sa.Text(), nullable=False),
            sa.Column("model_version", sa.Integer(), nullable=False),
            sa.Column("dataset", sa.Text(), nullable=False),
            sa.Column("dataset_version", sa.Text(), nullable=False),
            sa.Column("features_json", sa.Text(), nullable=False),
            sa.Column("rows", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("model"),
        )
    if "latest_reports" not in present:
        op.create_table(
            "latest_reports",
            sa.Column("model", sa.Text(), nullable=False),
            sa.Column("report_json", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("model"),
        )
    if "verdicts" not in present:
        _verdicts("verdicts")
    elif "id" not in {column["name"] for column in inspector.get_columns("verdicts")}:
        _adopt("verdicts", _verdicts, _VERDICT_COLUMNS)
    if "drift_events" not in present:
        _drift_events("drift_events")
    elif "id" not in {column["name"] for column in inspector.get_columns("drift_events")}:
        _adopt("drift_events", _drift_events, _DRIFT_EVENT_COLUMNS)
    if "rollout_steps" not in present:
        op.create_table(
            "rollout_steps",
            sa.Column("model", sa.Text(), nullable=False),
            sa.Column("challenger_version", sa.Integer(), nullable=False),
            sa.Column("step", sa.Integer(), nullable=False),
            sa.Column("step_started_at", sa.Text(), nullable=False),
            sa.Column("evidence_json", sa.Text(), nullable=False),
            sa.Column("updated_at", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("model"),
        )
    for table, index, columns in (
        ("verdicts", "verdicts_by_model", ["model", "computed_at"]),
        ("drift_events", "drift_events_by_model", ["model", "emitted_at"]),
    ):
        if index not in {found["name"] for found in sa.inspect(op.get_bind()).get_indexes(table)}:
            op.create_index(index, table, columns)


def downgrade() -> None:
    op.drop_index("drift_events_by_model", table_name="drift_events")
    op.drop_index("verdicts_by_model", table_name="verdicts")
    for table in ("rollout_steps", "drift_events", "verdicts", "latest_reports", "reference_datasets"):
        op.drop_table(table)
