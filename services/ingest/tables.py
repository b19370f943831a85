"""Ingest's metadata tables, as SQLAlchemy Core metadata. Alembic migrations create and evolve them
(services/ingest/migrations); a test checks that the migrations and this metadata agree.

Times are ISO-8601 UTC text, as the first (sqlite3) store wrote them: its files open unchanged, and
text of one format sorts chronologically on both databases. Rows are data, not hashes, so counts
and sizes are 64-bit.
"""

from __future__ import annotations

import sqlalchemy as sa

from cascade import database

__all__ = ["batches", "datasets", "leases", "metadata", "outbox", "rejected_rows", "segments", "versions"]

metadata = sa.MetaData()

# head_version is the one mutable column: a writer appending to a dataset holds its row locked.
datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("schema_json", sa.Text, nullable=False),
    sa.Column("head_version", sa.Text, nullable=True),
    sa.Column("created_at", sa.Text, nullable=False),
)

# Immutable once written: any replica may read a version without a lock.
versions = sa.Table(
    "versions",
    metadata,
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("parent", sa.Text, nullable=True),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("file_sha256", sa.Text, nullable=False),
    sa.Column("profile_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("dataset", "version"),
)

# The one segment each version adds (versions from before segments have none).
segments = sa.Table(
    "segments",
    metadata,
    sa.Column("dataset", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("segment", sa.Text, nullable=False),
    sa.Column("row_start", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("stats_json", sa.Text, nullable=False),
    sa.Index("ix_segments_dataset_segment", "dataset", "segment"),
)

# One row per batch id and dataset, whichever replica took it: the key makes a batch count once.
batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.Text, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("report_json", sa.Text, nullable=False),
    sa.Column("received_at", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("dataset", "batch_id"),
    sa.Index("ix_batches_dataset_version", "dataset", "version"),
)

# Events written in the transaction of the version they announce; published afterwards. event_id
# is unique, so a version announced again (a retried batch) stores its event once.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.Text, nullable=False, unique=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("event_json", sa.Text, nullable=False),
    sa.Column("published", sa.Boolean, nullable=False, server_default=sa.false()),
    # The W3C trace context the event was stored in, JSON.
    sa.Column("trace_carrier", sa.Text, nullable=False, server_default="{}"),
    sa.Index("ix_outbox_pending", "published", "id"),
)

# Which replica's relay publishes the outbox (cascade.database.Lease).
leases = database.lease_table(metadata)

rejected_rows = sa.Table(
    "rejected_rows",
    metadata,
    sa.Column("dataset", sa.Text, primary_key=True),
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("row", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("values_json", sa.Text, nullable=False),
)
