"""Initial schema: datasets, versions, segments, batches, the outbox and rejected rows.

A store written before migrations (by the sqlite3 store, which created these tables itself) is
adopted, not rebuilt: its tables and rows stay, and only what that store lacked is added (the
outbox's trace_carrier on the oldest files, and the two lookup indexes). Any other database gets
every table.

Revision ID: 0001
Revises:
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = set(inspector.get_table_names())
    if "datasets" not in present:
        op.create_table(
            "datasets",
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("schema_json", sa.Text(), nullable=False),
            sa.Column("head_version", sa.Text(), nullable=True),
            sa.Column("created_at", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("name"),
        )
    if "versions" not in present:
        op.create_table(
            "versions",
            sa.Column("version", sa.Text(), nullable=False),
            sa.Column("dataset", sa.Text(), nullable=False),
            sa.Column("parent", sa.Text(), nullable=True),
            sa.Column("rows", sa.BigInteger(), nullable=False),
            sa.Column("size_bytes", sa.BigInteger(), nullable=False),
            sa.Column("file_sha256", sa.Text(), nullable=False),
            sa.Column("profile_json", sa.Text(), nullable=False),
            sa.Column("created_at", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("dataset", "version"),
        )
    if "segments" not in present:
        op.create_table(
            "segments",
            sa.Column("dataset", sa.Text(), nullable=False),
            sa.Column("version", sa.Text(), nullable=False),
            sa.Column("seq", sa.Integer(), nullable=False),
            sa.Column("segment", sa.Text(), nullable=False),
            sa.Column("row_start", sa.BigInteger(), nullable=False),
            sa.Column("rows", sa.BigInteger(), nullable=False),
            sa.Column("size_bytes", sa.BigInteger(), nullable=False),
            sa.Column("stats_json", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("dataset", "version"),
        )
    if "batches" not in present:
        op.create_table(
            "batches",
            sa.Column("batch_id", sa.Text(), nullable=False),
            sa.Column("dataset", sa.Text(), nullable=False),
            sa.Column("version", sa.Text(), nullable=True),
            sa.Column("source", sa.Text(), nullable=False),
            sa.Column("report_json", sa.Text(), nullable=False),
            sa.Column("received_at", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("dataset", "batch_id"),
        )
    if "outbox" not in present:
        op.create_table(
            "outbox",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("event_id", sa.Text(), nullable=False),
            sa.Column("event_type", sa.Text(), nullable=False),
            sa.Column("event_json", sa.Text(), nullable=False),
            sa.Column("published", sa.Boolean(), server_default=sa.false(), nullable=False),
            sa.Column("trace_carrier", sa.Text(), server_default="{}", nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("event_id"),
        )
    elif "trace_carrier" not in {column["name"] for column in inspector.get_columns("outbox")}:
        op.add_column("outbox", sa.Column("trace_carrier", sa.Text(), server_default="{}", nullable=False))
    if "rejected_rows" not in present:
        op.create_table(
            "rejected_rows",
            sa.Column("dataset", sa.Text(), nullable=False),
            sa.Column("batch_id", sa.Text(), nullable=False),
            sa.Column("row", sa.Integer(), autoincrement=False, nullable=False),
            sa.Column("reason", sa.Text(), nullable=False),
            sa.Column("values_json", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("dataset", "batch_id", "row"),
        )
    for table, index, columns in (
        ("outbox", "ix_outbox_pending", ["published", "id"]),
        ("segments", "ix_segments_dataset_segment", ["dataset", "segment"]),
        ("batches", "ix_batches_dataset_version", ["dataset", "version"]),
    ):
        if index not in {found["name"] for found in sa.inspect(op.get_bind()).get_indexes(table)}:
            op.create_index(index, table, columns)


def downgrade() -> None:
    for index, table in (
        ("ix_batches_dataset_version", "batches"),
        ("ix_segments_dataset_segment", "segments"),
        ("ix_outbox_pending", "outbox"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("rejected_rows", "outbox", "batches", "segments", "versions", "datasets"):
        op.drop_table(table)
