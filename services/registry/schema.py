"""The registry's tables, as SQLAlchemy Core metadata. Alembic migrations create and evolve them
(services/registry/migrations); a test checks that the migrations and this metadata agree."""

from __future__ import annotations

import sqlalchemy as sa

from cascade import database

metadata = sa.MetaData()

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    # NULL: the registry's default policy applies.
    sa.Column("promotion_policy", sa.String(16), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

model_tags = sa.Table(
    "model_tags",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(256), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Who may do what to a model, when the registry authenticates callers (see permissions.py).
model_permissions = sa.Table(
    "model_permissions",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("principal", sa.String(128), primary_key=True),
    sa.Column("level", sa.String(16), nullable=False),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("artifact_sha256", sa.String(64), nullable=False),
    sa.Column("artifact_size", sa.BigInteger, nullable=False),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("dataset_version", sa.String(128), nullable=False),
    sa.Column("run_json", sa.Text, nullable=False),
    sa.Column("signature_json", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.String(256), nullable=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("validation_json", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("model", "idempotency_key", name="uq_versions_idempotency_key"),
    sa.Index("ix_versions_dataset_version", "dataset_version"),
)

version_tags = sa.Table(
    "version_tags",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key", sa.String(256), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Run metrics by name, and the validator's as `validation.<name>`: searchable in SQL.
version_metrics = sa.Table(
    "version_metrics",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Index("ix_version_metrics_name_value", "name", "value"),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

# Append-only: no API updates or deletes a row.
alias_history = sa.Table(
    "alias_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("from_version", sa.Integer, nullable=True),
    # NULL: the move deleted the alias.
    sa.Column("to_version", sa.Integer, nullable=True),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    # For `canary` and `shadow`: the share of requests (0..100) the move gave the version.
    sa.Column("traffic_percent", sa.Float, nullable=True),
    sa.Index("ix_alias_history_model", "model"),
)

training_specs = sa.Table(
    "training_specs",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Events written in the same transaction as the change they announce; published afterwards.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("event_json", sa.Text, nullable=False),
    sa.Column("published", sa.Boolean, nullable=False, server_default=sa.false()),
    # Webhook delivery, apart from Kafka so a dead endpoint never holds events back:
    # NULL (no webhooks were configured), pending, delivered or failed (gave up).
    sa.Column("webhook_state", sa.String(16), nullable=True),
    sa.Column("webhook_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("webhook_next_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("webhook_error", sa.Text, nullable=True),
    sa.Index("ix_outbox_published", "published"),
    sa.Index("ix_outbox_webhook_state", "webhook_state"),
)

# Which replica's relay publishes the outbox (`outbox`) and POSTs its webhooks (`webhooks`):
# cascade.database.Lease.
leases = database.lease_table(metadata)

# Chat notifications (notifications.py): one job per destination and event id, which is the dedup
# key; the sender retries a pending job until it is delivered or its deadline passes (failed).
notification_jobs = sa.Table(
    "notification_jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("destination", sa.String(128), nullable=False),
    sa.Column("event_id", sa.String(256), nullable=False),
    sa.Column("event_kind", sa.String(64), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    # The rendered message; never the destination's URL, which is a secret.
    sa.Column("body_json", sa.Text, nullable=False),
    # pending, delivered or failed (gave up).
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("destination", "event_id", name="uq_notification_jobs_destination_event"),
    sa.Index("ix_notification_jobs_state_next_at", "state", "next_at"),
)

# Dead letters counted per time window, so the over-threshold notice goes out once per window.
dead_letter_windows = sa.Table(
    "dead_letter_windows",
    metadata,
    sa.Column("window_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("notified", sa.Boolean, nullable=False, server_default=sa.false()),
)

# Under the manual policy, a version that passed validation waits here (pending) for someone who
# manages the model; approved, rejected and superseded rows stay as the record of who decided.
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    # pending, approved, rejected or superseded.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("requested_by", sa.String(256), nullable=False),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("request_reason", sa.Text, nullable=False),
    sa.Column("champion_version", sa.Integer, nullable=True),
    sa.Column("decided_by", sa.String(256), nullable=True),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("superseded_by", sa.Integer, nullable=True),
    sa.Index("ix_approvals_status", "status"),
)

# A model's traffic split beside its champion: the versions are the aliases `canary` and `shadow`,
# their shares of requests live here, with the revision every change bumps (serving replicas never
# go back to an older one). No row: no change yet (revision 0, no canary, no shadow).
traffic = sa.Table(
    "traffic",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("canary_percent", sa.Float, nullable=False),
    sa.Column("shadow_percent", sa.Float, nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# A model's own rollout plan (rollouts.RolloutPlan as JSON); no row: the registry's default.
rollout_plans = sa.Table(
    "rollout_plans",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("plan_json", sa.Text, nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Every rollout, the latest per model the one that counts; the plan is copied in when it starts.
rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # running, promoted or rolled_back.
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("plan_json", sa.Text, nullable=False),
    sa.Index("ix_rollouts_model", "model"),
)
