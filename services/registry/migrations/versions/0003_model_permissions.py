"""Per-model permissions.

Revision ID: 0003
Revises: 0002
Created: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_permissions",
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("model", "principal"),
    )


def downgrade() -> None:
    op.drop_table("model_permissions")
