"""The registry's metadata behind SQLAlchemy Core: SQLite (WAL) by default, PostgreSQL by URL.

Every write is one transaction. Alias moves, status changes and the events announcing them are
written together (a transactional outbox), so none is lost in a crash. Writes on one model are
serialized: SQLite takes its write lock at BEGIN, PostgreSQL locks the model's row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cascade import database
from cascade.errors import AlreadyExists, NotFound
from cascade.services.registry import schema
from cascade.services.registry.rollouts import RolloutPlan, RolloutRecord
from cascade.services.registry.schema import (
    alias_history,
    aliases,
    approvals,
    model_tags,
    models,
    outbox,
    rollout_plans,
    rollouts,
    traffic,
    training_specs,
    version_metrics,
    version_tags,
    versions,
)

MIGRATIONS = Path(__file__).parent / "migrations"
STATUSES = ("PENDING", "READY", "FAILED")
APPROVAL_STATUSES = ("pending", "approved", "rejected", "superseded")
# Up to this many versions read at once, their tags are looked up by (model, version).
_EXACT_TAG_LOOKUP_MAX = 200
COMPARISONS = {
    "==": lambda column, value: column == value,
    "!=": lambda column, value: column != value,
    ">": lambda column, value: column > value,
    ">=": lambda column, value: column >= value,
    "<": lambda column, value: column < value,
    "<=": lambda column, value: column <= value,
}


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: int
    status: str
    artifact_sha256: str
    artifact_size: int
    dataset: str
    dataset_version: str
    run: dict[str, Any]
    tags: dict[str, str]
    signature: dict[str, Any]
    idempotency_key: str | None
    description: str
    validation: dict[str, Any] | None
    created_at: datetime
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelRecord:
    name: str
    description: str
    promotion_policy: str | None
    tags: dict[str, str]
    created_at: datetime
    latest_version: int
    aliases: dict[str, int]


@dataclass(frozen=True)
class ApprovalRecord:
    """A version awaiting (or past) a person's approval under the manual policy."""

    model: str
    version: int
    status: str  # one of APPROVAL_STATUSES
    requested_by: str
    requested_at: datetime
    request_reason: str
    champion_version: int | None
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    superseded_by: int | None


@dataclass(frozen=True)
class MetricCondition:
    name: str
    op: str  # a key of COMPARISONS
    value: float


@dataclass(frozen=True)
class VersionQuery:
    model: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: tuple[MetricCondition, ...] = ()
    status: str = ""
    dataset_version: str = ""
    limit: int = 100


# The registry's URLs are the shared mechanism's; re-exported for the registry's callers.
sqlite_url = database.sqlite_url


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest Alembic revision (a no-op when it is there already); replicas
    starting at once on one PostgreSQL database queue on cascade.database.migrate's advisory lock."""
    database.migrate(engine, MIGRATIONS)


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything here is stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class RegistryStore:
    def __init__(self, url: str) -> None:
        self.engine = database.engine(url, writer=True)
        self.reader = database.engine(url, writer=False) if url.startswith("sqlite") else self.engine
        migrate(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.reader.dispose()
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as connection:
            yield connection

    def _read(self) -> sa.Connection:
        return self.reader.connect()

    # -- models --------------------------------------------------------------------------------
    def ensure_model(self, db: sa.Connection, name: str) -> None:
        """Create the model's row if this is its first appearance, then hold it locked so writes on
        one model queue behind each other (PostgreSQL; SQLite already serialized at BEGIN)."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        db.execute(
            insert(models)
            .values(name=name, description="", promotion_policy=None, created_at=_now())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        if self.dialect == "postgresql":
            db.execute(sa.select(models.c.name).where(models.c.name == name).with_for_update())

    def register_model(
        self, name: str, description: str, policy: str | None, tags: Mapping[str, str]
    ) -> ModelRecord:
        with self.transaction() as db:
            try:
                db.execute(
                    models.insert().values(
                        name=name, description=description, promotion_policy=policy, created_at=_now()
                    )
                )
            except sa.exc.IntegrityError as exc:
                raise AlreadyExists(f"model {name!r} is already registered") from exc
            self._set_tags(db, model_tags, {"model": name}, tags)
        return self.get_model(name)

    def model_exists(self, name: str) -> bool:
        with self._read() as db:
            return db.execute(sa.select(models.c.name).where(models.c.name == name)).first() is not None

    def get_model(self, name: str) -> ModelRecord:
        found = self._models(sa.select(models).where(models.c.name == name))
        if not found:
            raise NotFound(f"model {name!r} is not registered")
        return found[0]

    def models(self) -> list[ModelRecord]:
        return self._models(sa.select(models).order_by(models.c.name))

    def update_model(
        self,
        db: sa.Connection,
        name: str,
        description: str | None,
        policy: str | None,
        set_tags: Mapping[str, str],
        delete_tags: Iterable[str],
    ) -> None:
        changes: dict[str, Any] = {}
        if description is not None:
            changes["description"] = description
        if policy is not None:
            changes["promotion_policy"] = policy
        if changes:
            db.execute(models.update().where(models.c.name == name).values(**changes))
        self._set_tags(db, model_tags, {"model": name}, set_tags, delete_tags)

    def _models(self, query: sa.Select[Any]) -> list[ModelRecord]:
        with self._read() as db:
            rows = db.execute(query).mappings().all()
            names = [row["name"] for row in rows]
            if not names:
                return []
            latest = dict(
                db.execute(
                    sa.select(versions.c.model, sa.func.max(versions.c.version))
                    .where(versions.c.model.in_(names))
                    .group_by(versions.c.model)
                ).all()
            )
            tags: dict[str, dict[str, str]] = {}
            for model, key, value in db.execute(
                sa.select(model_tags.c.model, model_tags.c.key, model_tags.c.value).where(
                    model_tags.c.model.in_(names)
                )
            ):
                tags.setdefault(model, {})[key] = value
            targets: dict[str, dict[str, int]] = {}
            for model, alias, version in db.execute(
                sa.select(aliases.c.model, aliases.c.alias, aliases.c.version).where(
                    aliases.c.model.in_(names)
                )
            ):
                targets.setdefault(model, {})[alias] = int(version)
        return [
            ModelRecord(
                name=row["name"],
                description=row["description"],
                promotion_policy=row["promotion_policy"],
                tags=tags.get(row["name"], {}),
                created_at=_utc(row["created_at"]),
                latest_version=int(latest.get(row["name"]) or 0),
                aliases=targets.get(row["name"], {}),
            )
            for row in rows
        ]

    # -- versions ------------------------------------------------------------------------------
    def insert_version(self, db: sa.Connection, record: dict[str, Any]) -> int:
        """Number and insert a version; the caller holds the model (ensure_model)."""
        model = record["model"]
        latest = db.execute(
            sa.select(sa.func.coalesce(sa.func.max(versions.c.version), 0)).where(versions.c.model == model)
        ).scalar_one()
        version = int(latest) + 1
        db.execute(
            versions.insert().values(
                model=model,
                version=version,
                status="PENDING",
                artifact_sha256=record["artifact_sha256"],
                artifact_size=record["artifact_size"],
                dataset=record["dataset"],
                dataset_version=record["dataset_version"],
                run_json=json.dumps(record["run"]),
                signature_json=json.dumps(record["signature"]),
                idempotency_key=record["idempotency_key"] or None,
                description=record["description"],
                validation_json=None,
                created_at=_now(),
            )
        )
        key = {"model": model, "version": version}
        self._set_tags(db, version_tags, key, record["tags"])
        self._set_metrics(db, key, record["run"].get("metrics", {}))
        return version

    def find_by_key(self, model: str, key: str) -> VersionRecord | None:
        found = self._versions(
            sa.select(versions).where(versions.c.model == model, versions.c.idempotency_key == key)
        )
        return found[0] if found else None

    def get(self, model: str, version: int) -> VersionRecord:
        found = self._versions(
            sa.select(versions).where(versions.c.model == model, versions.c.version == version)
        )
        if not found:
            raise NotFound(f"model {model!r} has no version {version}")
        return found[0]

    def list_versions(self, model: str, dataset_version: str = "") -> list[VersionRecord]:
        query = sa.select(versions).where(versions.c.model == model)
        if dataset_version:
            query = query.where(versions.c.dataset_version == dataset_version)
        return self._versions(query.order_by(versions.c.version))

    def search(self, query: VersionQuery) -> list[VersionRecord]:
        """Versions matching every condition, newest first. Tags and metrics filter in SQL, through
        one EXISTS per condition, so the same query runs on SQLite and PostgreSQL."""
        select = sa.select(versions)
        if query.model:
            select = select.where(versions.c.model == query.model)
        if query.status:
            select = select.where(versions.c.status == query.status)
        if query.dataset_version:
            select = select.where(versions.c.dataset_version == query.dataset_version)
        for key, value in query.tags.items():
            select = select.where(
                sa.exists().where(
                    version_tags.c.model == versions.c.model,
                    version_tags.c.version == versions.c.version,
                    version_tags.c.key == key,
                    version_tags.c.value == value,
                )
            )
        for condition in query.metrics:
            select = select.where(
                sa.exists().where(
                    version_metrics.c.model == versions.c.model,
                    version_metrics.c.version == versions.c.version,
                    version_metrics.c.name == condition.name,
                    COMPARISONS[condition.op](version_metrics.c.value, condition.value),
                )
            )
        order = (versions.c.created_at.desc(), versions.c.model, versions.c.version.desc())
        return self._versions(select.order_by(*order).limit(query.limit))

    def set_validation(self, db: sa.Connection, model: str, version: int, report: dict[str, Any]) -> None:
        db.execute(
            versions.update()
            .where(versions.c.model == model, versions.c.version == version)
            .values(validation_json=json.dumps(report))
        )
        metrics = {f"validation.{name}": value for name, value in report.get("metrics", {}).items()}
        self._set_metrics(db, {"model": model, "version": version}, metrics)

    def set_status(self, db: sa.Connection, model: str, version: int, status: str) -> str:
        """Set a version's status; returns the one it had."""
        previous = db.execute(
            sa.select(versions.c.status).where(versions.c.model == model, versions.c.version == version)
        ).scalar_one()
        db.execute(
            versions.update()
            .where(versions.c.model == model, versions.c.version == version)
            .values(status=status)
        )
        return str(previous)

    def update_version(
        self,
        db: sa.Connection,
        model: str,
        version: int,
        description: str | None,
        set_tags: Mapping[str, str],
        delete_tags: Iterable[str],
    ) -> None:
        if description is not None:
            db.execute(
                versions.update()
                .where(versions.c.model == model, versions.c.version == version)
                .values(description=description)
            )
        self._set_tags(db, version_tags, {"model": model, "version": version}, set_tags, delete_tags)

    def _versions(self, query: sa.Select[Any]) -> list[VersionRecord]:
        with self._read() as db:
            rows = db.execute(query).mappings().all()
            if not rows:
                return []
            names = {row["model"] for row in rows}
            if len(rows) <= _EXACT_TAG_LOOKUP_MAX:  # only these versions' tags, not their models' history
                pairs = [(row["model"], row["version"]) for row in rows]
                owners = sa.tuple_(version_tags.c.model, version_tags.c.version).in_(pairs)
            else:  # a long listing: one scan of the models' tags beats a huge IN list
                owners = version_tags.c.model.in_(names)
            tags: dict[tuple[str, int], dict[str, str]] = {}
            for model, version, key, value in db.execute(sa.select(version_tags).where(owners)):
                tags.setdefault((model, int(version)), {})[key] = value
            labels: dict[tuple[str, int], list[str]] = {}
            for model, alias, version in db.execute(sa.select(aliases).where(aliases.c.model.in_(names))):
                labels.setdefault((model, int(version)), []).append(alias)
        return [
            VersionRecord(
                model=row["model"],
                version=int(row["version"]),
                status=row["status"],
                artifact_sha256=row["artifact_sha256"],
                artifact_size=int(row["artifact_size"]),
                dataset=row["dataset"],
                dataset_version=row["dataset_version"],
                run=json.loads(row["run_json"]),
                tags=tags.get((row["model"], int(row["version"])), {}),
                signature=json.loads(row["signature_json"]),
                idempotency_key=row["idempotency_key"],
                description=row["description"],
                validation=json.loads(row["validation_json"]) if row["validation_json"] else None,
                created_at=_utc(row["created_at"]),
                aliases=sorted(labels.get((row["model"], int(row["version"])), [])),
            )
            for row in rows
        ]

    def _set_tags(
        self,
        db: sa.Connection,
        table: sa.Table,
        owner: dict[str, Any],
        set_tags: Mapping[str, str],
        delete_tags: Iterable[str] = (),
    ) -> None:
        keys = set(set_tags) | set(delete_tags)
        if keys:
            match = [table.c[column] == value for column, value in owner.items()]
            db.execute(table.delete().where(*match, table.c.key.in_(keys)))
        if set_tags:
            db.execute(table.insert(), [{**owner, "key": k, "value": v} for k, v in set_tags.items()])

    def _set_metrics(self, db: sa.Connection, owner: dict[str, Any], metrics: Mapping[str, float]) -> None:
        if not metrics:
            return
        match = [version_metrics.c[column] == value for column, value in owner.items()]
        db.execute(version_metrics.delete().where(*match, version_metrics.c.name.in_(list(metrics))))
        db.execute(
            version_metrics.insert(),
            [{**owner, "name": name, "value": float(value)} for name, value in metrics.items()],
        )

    # -- aliases -------------------------------------------------------------------------------
    def aliases(self, model: str) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute(sa.select(aliases.c.alias, aliases.c.version).where(aliases.c.model == model))
            return {alias: int(version) for alias, version in rows}

    def alias_target(self, model: str, alias: str, db: sa.Connection | None = None) -> int | None:
        query = sa.select(aliases.c.version).where(aliases.c.model == model, aliases.c.alias == alias)
        if db is not None:
            target = db.execute(query).scalar_one_or_none()
        else:
            with self._read() as read:
                target = read.execute(query).scalar_one_or_none()
        return int(target) if target is not None else None

    def move_alias(
        self,
        db: sa.Connection,
        model: str,
        alias: str,
        version: int | None,
        actor: str,
        reason: str,
        traffic_percent: float | None = None,
    ) -> int | None:
        """Point `alias` at `version` (None deletes it) and append the move to the history (with the
        share of traffic it gave, for `canary` and `shadow`), inside the caller's transaction, which
        holds the model; returns the previous target."""
        previous = self.alias_target(model, alias, db)
        db.execute(aliases.delete().where(aliases.c.model == model, aliases.c.alias == alias))
        if version is not None:
            db.execute(aliases.insert().values(model=model, alias=alias, version=version))
        db.execute(
            alias_history.insert().values(
                model=model,
                alias=alias,
                from_version=previous,
                to_version=version,
                actor=actor,
                reason=reason,
                at=_now(),
                traffic_percent=traffic_percent,
            )
        )
        return previous

    def history(self, model: str, db: sa.Connection | None = None) -> list[dict[str, Any]]:
        """Every alias move of a model, oldest first; inside `db` when given (to act on it)."""
        query = (
            sa.select(
                alias_history.c.alias,
                alias_history.c.from_version,
                alias_history.c.to_version,
                alias_history.c.actor,
                alias_history.c.reason,
                alias_history.c.at,
                alias_history.c.traffic_percent,
            )
            .where(alias_history.c.model == model)
            .order_by(alias_history.c.id)
        )
        if db is not None:
            return [{**row, "at": _utc(row["at"])} for row in db.execute(query).mappings()]
        with self._read() as read:
            return [{**row, "at": _utc(row["at"])} for row in read.execute(query).mappings()]

    # -- approvals -----------------------------------------------------------------------------
    def request_approval(
        self,
        db: sa.Connection,
        model: str,
        version: int,
        requested_by: str,
        reason: str,
        champion: int | None,
    ) -> list[int]:
        """Record `version` as pending and close the model's older pending approvals as superseded
        by it, in the caller's transaction; returns the versions it superseded."""
        older = self.supersede_approvals(db, model, version)
        db.execute(
            approvals.insert().values(
                model=model,
                version=version,
                status="pending",
                requested_by=requested_by,
                requested_at=_now(),
                request_reason=reason,
                champion_version=champion,
            )
        )
        return older

    def supersede_approvals(self, db: sa.Connection, model: str, version: int) -> list[int]:
        """Close the model's pending approvals as superseded by `version`; returns their versions."""
        older = self.approval_versions(db, model, "pending")
        if older:
            db.execute(
                approvals.update()
                .where(approvals.c.model == model, approvals.c.status == "pending")
                .values(
                    status="superseded",
                    decided_by="registry",
                    decided_at=_now(),
                    reason=f"superseded by v{version}",
                    superseded_by=version,
                )
            )
        return older

    def approval_versions(self, db: sa.Connection, model: str, status: str) -> list[int]:
        query = sa.select(approvals.c.version).where(approvals.c.model == model, approvals.c.status == status)
        return [int(v) for v in db.execute(query.order_by(approvals.c.version)).scalars()]

    def decide_approval(
        self, db: sa.Connection, model: str, version: int, status: str, decided_by: str, reason: str
    ) -> None:
        db.execute(
            approvals.update()
            .where(approvals.c.model == model, approvals.c.version == version)
            .values(status=status, decided_by=decided_by, decided_at=_now(), reason=reason)
        )

    def approval(self, model: str, version: int, db: sa.Connection | None = None) -> ApprovalRecord | None:
        found = self.approvals(model, version=version, db=db)
        return found[0] if found else None

    def approvals(
        self, model: str = "", status: str = "", version: int = 0, db: sa.Connection | None = None
    ) -> list[ApprovalRecord]:
        """Approvals of one model (or all), optionally of one status or version; newest first."""
        query = sa.select(approvals)
        if model:
            query = query.where(approvals.c.model == model)
        if status:
            query = query.where(approvals.c.status == status)
        if version:
            query = query.where(approvals.c.version == version)
        query = query.order_by(approvals.c.requested_at.desc(), approvals.c.model, approvals.c.version.desc())
        if db is not None:
            rows = db.execute(query).mappings().all()
        else:
            with self._read() as read:
                rows = read.execute(query).mappings().all()
        return [
            ApprovalRecord(
                model=row["model"],
                version=int(row["version"]),
                status=row["status"],
                requested_by=row["requested_by"],
                requested_at=_utc(row["requested_at"]),
                request_reason=row["request_reason"],
                champion_version=row["champion_version"],
                decided_by=row["decided_by"],
                decided_at=_utc(row["decided_at"]) if row["decided_at"] else None,
                reason=row["reason"],
                superseded_by=row["superseded_by"],
            )
            for row in rows
        ]

    # -- traffic and rollouts ------------------------------------------------------------------
    def traffic_row(self, model: str, db: sa.Connection | None = None) -> dict[str, Any] | None:
        """The model's split row (revision, percents, who and why), None before its first change."""
        query = sa.select(traffic).where(traffic.c.model == model)
        if db is not None:
            row = db.execute(query).mappings().first()
        else:
            with self._read() as read:
                row = read.execute(query).mappings().first()
        return {**row, "updated_at": _utc(row["updated_at"])} if row is not None else None

    def write_traffic(
        self,
        db: sa.Connection,
        model: str,
        canary_percent: float,
        shadow_percent: float,
        actor: str,
        reason: str,
    ) -> int:
        """Record the split's percents and bump its revision, in the caller's transaction (which
        holds the model); returns the new revision."""
        row = self.traffic_row(model, db)
        values = {
            "canary_percent": canary_percent,
            "shadow_percent": shadow_percent,
            "actor": actor,
            "reason": reason,
            "updated_at": _now(),
        }
        if row is None:
            db.execute(traffic.insert().values(model=model, revision=1, **values))
            return 1
        revision = int(row["revision"]) + 1
        db.execute(traffic.update().where(traffic.c.model == model).values(revision=revision, **values))
        return revision

    def rollout_plan(self, model: str) -> RolloutPlan | None:
        """The plan the model set, None when it set none."""
        with self._read() as db:
            row = (
                db.execute(sa.select(rollout_plans).where(rollout_plans.c.model == model)).mappings().first()
            )
        if row is None:
            return None
        return RolloutPlan.from_json(
            row["plan_json"], is_default=False, actor=row["actor"], updated_at=_utc(row["updated_at"])
        )

    def set_rollout_plan(self, db: sa.Connection, model: str, plan: RolloutPlan, actor: str) -> None:
        db.execute(rollout_plans.delete().where(rollout_plans.c.model == model))
        db.execute(
            rollout_plans.insert().values(
                model=model, plan_json=plan.to_json(), actor=actor, updated_at=_now()
            )
        )

    def latest_rollout(self, model: str, db: sa.Connection | None = None) -> RolloutRecord | None:
        query = sa.select(rollouts).where(rollouts.c.model == model).order_by(rollouts.c.id.desc()).limit(1)
        if db is not None:
            row = db.execute(query).mappings().first()
        else:
            with self._read() as read:
                row = read.execute(query).mappings().first()
        if row is None:
            return None
        return RolloutRecord(
            model=row["model"],
            version=int(row["version"]),
            state=row["state"],
            step=int(row["step"]),
            started_at=_utc(row["started_at"]),
            step_started_at=_utc(row["step_started_at"]),
            cause=row["cause"],
            plan=RolloutPlan.from_json(row["plan_json"], is_default=False),
        )

    def start_rollout(self, db: sa.Connection, model: str, version: int, plan: RolloutPlan) -> None:
        now = _now()
        db.execute(
            rollouts.insert().values(
                model=model,
                version=version,
                state="running",
                step=0,
                started_at=now,
                step_started_at=now,
                cause="",
                plan_json=plan.to_json(),
            )
        )

    def update_rollout(self, db: sa.Connection, model: str, state: str, step: int, cause: str) -> None:
        """Move the model's latest rollout to `step` (its clock restarts when the step changes) or
        end it with `state` and `cause`."""
        latest = sa.select(sa.func.max(rollouts.c.id)).where(rollouts.c.model == model).scalar_subquery()
        current = self.latest_rollout(model, db)
        values: dict[str, Any] = {"state": state, "step": step, "cause": cause}
        if current is not None and current.step != step:
            values["step_started_at"] = _now()
        db.execute(rollouts.update().where(rollouts.c.id == latest).values(**values))

    # -- training specs ------------------------------------------------------------------------
    def add_training_spec(self, model: str, spec_json: str, actor: str) -> int:
        with self.transaction() as db:
            self.ensure_model(db, model)
            latest = db.execute(
                sa.select(sa.func.coalesce(sa.func.max(training_specs.c.version), 0)).where(
                    training_specs.c.model == model
                )
            ).scalar_one()
            version = int(latest) + 1
            db.execute(
                training_specs.insert().values(
                    model=model, version=version, spec_json=spec_json, actor=actor, created_at=_now()
                )
            )
        return version

    def training_spec(self, model: str, version: int = 0) -> tuple[int, str, str, datetime]:
        """(version, spec JSON, actor, created at) of a model's spec; the latest when version is 0."""
        query = sa.select(training_specs).where(training_specs.c.model == model)
        if version:
            query = query.where(training_specs.c.version == version)
        with self._read() as db:
            row = db.execute(query.order_by(training_specs.c.version.desc()).limit(1)).mappings().first()
        if row is None:
            raise NotFound(
                f"model {model!r} has no training spec" + (f" version {version}" if version else "")
            )
        return int(row["version"]), row["spec_json"], row["actor"], _utc(row["created_at"])

    # -- outbox --------------------------------------------------------------------------------
    def enqueue(self, db: sa.Connection, event_type: str, event_json: str, webhooks: bool) -> None:
        db.execute(
            outbox.insert().values(
                event_type=event_type,
                event_json=event_json,
                published=False,
                webhook_state="pending" if webhooks else None,
            )
        )

    def due_webhooks(self, limit: int = 100) -> list[tuple[int, str, int]]:
        """(id, event JSON, attempts so far) of events whose webhook delivery is due, oldest first.
        Replicas sharing the database deliver them one at a time, whichever holds the `webhooks`
        lease."""
        query = (
            sa.select(outbox.c.id, outbox.c.event_json, outbox.c.webhook_attempts)
            .where(
                outbox.c.webhook_state == "pending",
                sa.or_(outbox.c.webhook_next_at.is_(None), outbox.c.webhook_next_at <= _now()),
            )
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self._read() as db:
            return [(int(i), str(e), int(a)) for i, e, a in db.execute(query)]

    def record_webhook(
        self, event_id: int, state: str, attempts: int, retry_at: datetime | None, error: str
    ) -> None:
        with self.transaction() as db:
            db.execute(
                outbox.update()
                .where(outbox.c.id == event_id)
                .values(
                    webhook_state=state,
                    webhook_attempts=attempts,
                    webhook_next_at=retry_at,
                    webhook_error=error or None,
                )
            )

    def webhook_states(self) -> dict[str, int]:
        """How many events are in each webhook state (for tests and operators)."""
        query = (
            sa.select(outbox.c.webhook_state, sa.func.count())
            .where(outbox.c.webhook_state.is_not(None))
            .group_by(outbox.c.webhook_state)
        )
        with self._read() as db:
            return {str(state): int(count) for state, count in db.execute(query)}

    def pending_events(self, limit: int | None = None) -> list[tuple[int, str, str]]:
        """(id, event type, event JSON) of the oldest `limit` (default: all) unpublished events.
        Replicas sharing the database publish them one at a time, whichever holds the `outbox`
        lease."""
        query = (
            sa.select(outbox.c.id, outbox.c.event_type, outbox.c.event_json)
            .where(outbox.c.published == sa.false())
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self._read() as db:
            return [(int(i), str(t), str(e)) for i, t, e in db.execute(query)]

    def newest_event_id(self) -> int:
        with self._read() as db:
            return int(db.execute(sa.select(sa.func.coalesce(sa.func.max(outbox.c.id), 0))).scalar_one())

    def lease(self, name: str, seconds: float) -> database.Lease:
        """The lease `name` in this database, for a new holder: replicas sharing the database take
        turns at the job it names (`outbox`: publishing events; `webhooks`: POSTing them)."""
        return database.Lease(self.engine, schema.leases, name, seconds)

    def mark_published(self, event_ids: Sequence[int]) -> None:
        with self.transaction() as db:
            db.execute(outbox.update().where(outbox.c.id.in_(event_ids)).values(published=True))


__all__ = [
    "APPROVAL_STATUSES",
    "STATUSES",
    "ApprovalRecord",
    "MetricCondition",
    "ModelRecord",
    "RegistryStore",
    "VersionQuery",
    "VersionRecord",
    "migrate",
    "schema",
    "sqlite_url",
]
