"""Shared model state: the window, the drift streak, the cooldown, predictions awaiting labels and
labelled rows move from each replica's memory into the store, so that replicas on one database, or a
restarted monitor, see the same ones.

Revision ID: 0002
Revises: 0001
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_states",
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("window_version", sa.Integer(), nullable=True),
        sa.Column("window_width", sa.Integer(), nullable=True),
        sa.Column("pending", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("seen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("consecutive_drifted", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_emitted", sa.Float(), nullable=True),
        sa.Column("labels_pending", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("labelled_after", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("feedback_after", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("held_back_drift", sa.Float(), nullable=True),
        sa.Column("held_back_decay", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("model"),
    )
    op.create_table(
        "window_rows",
        sa.Column("id", _ROW_ID, autoincrement=True, nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.Column("prediction", sa.Float(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("window_rows_by_model", "window_rows", ["model", "id"])
    op.create_table(
        "awaiting_labels",
        sa.Column("id", _ROW_ID, autoincrement=True, nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("predictions", sa.LargeBinary(), nullable=False),
        sa.Column("confidences", sa.LargeBinary(), nullable=False),
        sa.Column("inputs", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "request_id", name="awaiting_labels_by_request"),
    )
    op.create_index("awaiting_labels_by_model", "awaiting_labels", ["model", "id"])
    op.create_table(
        "labelled_rows",
        sa.Column("id", _ROW_ID, autoincrement=True, nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("prediction", sa.Float(), nullable=False),
        sa.Column("truth", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("labelled_rows_by_model", "labelled_rows", ["model", "id"])


def downgrade() -> None:
    for table in ("labelled_rows", "awaiting_labels", "window_rows", "model_states"):
        op.drop_table(table)
