"""The registry's domain: versions with lineage, aliases with an audit trail, promotion on validation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import onnx
import sqlalchemy as sa
from prometheus_client import Counter

from cascade.client.records import DatasetVersion
from cascade.database import Lease
from cascade.errors import FailedPrecondition, InvalidArgument, NotFound
from cascade.events import (
    Event,
    ModelAliasChanged,
    ModelApprovalDecided,
    ModelApprovalRequested,
    ModelPromoted,
    ModelTrafficChanged,
    ModelValidated,
    ModelVersionCreated,
    ModelVersionStatusChanged,
)
from cascade.grpc_io import ReceivedFile
from cascade.names import ALIAS_PATTERN, check_name
from cascade.outbox import OutboxRelay
from cascade.services.registry.artifacts import ArtifactStore
from cascade.services.registry.rollouts import (
    RolloutPlan,
    RolloutRecord,
    TrafficRecord,
    check_percent,
)
from cascade.services.registry.store import (
    APPROVAL_STATUSES,
    ApprovalRecord,
    ModelRecord,
    RegistryStore,
    VersionQuery,
    VersionRecord,
)
from cascade.services.registry.webhooks import WebhookError, WebhookSender

log = logging.getLogger(__name__)

SOURCE = "cascade/registry"
PROMOTIONS = Counter("cascade_registry_alias_moves_total", "Alias moves.", ["model", "alias", "actor"])

Publish = Callable[[Event], Awaitable[None]]

_ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}


def onnx_signature(path: Any) -> dict[str, list[dict[str, Any]]]:
    """Input and output names, datatypes and shapes (-1 for dynamic dims) read from the ONNX graph."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise InvalidArgument(f"artifact is not a valid ONNX model: {exc}") from exc

    def describe(values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": value.name,
                "datatype": _ONNX_TYPES.get(value.type.tensor_type.elem_type, "UNKNOWN"),
                "shape": [
                    d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
                ],
            }
            for value in values
        ]

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


@dataclass
class NewVersion:
    model: str
    dataset: str
    dataset_version: str
    run: dict[str, Any]
    idempotency_key: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""


POLICIES = ("automatic", "manual", "progressive")
# A traffic change's reason (a breach's cause, a person's why) goes into ModelTrafficChanged, which
# is bounded (64 KiB): a reason is a sentence, not a report.
MAX_TRAFFIC_REASON = 4096
# The aliases a model's traffic split is made of, beside `champion`.
TRAFFIC_ALIASES = ("canary", "shadow")
TrafficAction = Literal["set", "rollout_started", "rollout_advanced", "promoted", "rolled_back"]
MAX_TAG_VALUE = 4 * 1024 * 1024
# Outbox events read and marked published per transaction: bounded, however long Kafka was away.
OUTBOX_BATCH = 500
# How often a replica asks for the webhooks' lease while another replica holds it.
WEBHOOK_LEASE_RETRY_SECONDS = 1.0
# How long a change's RPC waits for Kafka to take its events before answering anyway: during an
# outage a producer hangs until its own timeout, and the caller must not.
EVENT_WAIT_SECONDS = 1.0


class RegistryCore:
    def __init__(
        self,
        store: RegistryStore,
        artifacts: ArtifactStore,
        publish: Publish,
        policy: str,
        webhooks: WebhookSender | None = None,
        default_plan: RolloutPlan | None = None,
        lease_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.publish = publish
        self.policy = policy  # the default for models that set none
        self.default_plan = (default_plan or RolloutPlan()).checked()
        self.webhooks = webhooks if webhooks and webhooks.urls else None
        # One flush at a time, so no event goes out twice from here; and one replica's relay at a
        # time, whichever holds the outbox's lease, so none goes out twice from the replicas.
        self._outbox = OutboxRelay(
            store, publish, batch_size=OUTBOX_BATCH, lease=store.lease("outbox", lease_seconds)
        )
        # Webhooks are POSTed by one replica at a time too. Its lease outlasts a POST (the sender's
        # timeout) by more than the renewal margin, so a POST started while held ends while held.
        self._webhook_lease = (
            store.lease("webhooks", lease_seconds + 1.5 * self.webhooks.timeout) if self.webhooks else None
        )
        self._delivering = asyncio.Lock()  # one webhook round at a time in this replica too
        # While another replica holds the webhooks' lease, this one asks for it at most once a
        # second, not at every round of a relay that polls the outbox often.
        self._webhook_lease_retry_at = 0.0
        self._wake_relay = asyncio.Event()

    # -- models --------------------------------------------------------------------------------
    def register_model(
        self, name: str, description: str, policy: str | None, tags: dict[str, str]
    ) -> ModelRecord:
        check_name("model", name)
        _check_tags(tags)
        return self.store.register_model(name, description, policy, tags)

    def get_model(self, name: str) -> ModelRecord:
        return self.store.get_model(check_name("model", name))

    def update_model(
        self,
        name: str,
        description: str | None,
        policy: str | None,
        set_tags: dict[str, str],
        delete_tags: list[str],
    ) -> ModelRecord:
        self.get_model(name)
        _check_tags(set_tags)
        with self.store.transaction() as db:
            self.store.ensure_model(db, name)
            self.store.update_model(db, name, description, policy, set_tags, delete_tags)
        return self.store.get_model(name)

    def effective_policy(self, model: ModelRecord) -> str:
        return model.promotion_policy or self.policy

    def signature(self, model: ModelRecord) -> dict[str, Any]:
        """The champion's signature, else the latest version's; empty before any version."""
        version = model.aliases.get("champion") or model.latest_version
        return self.store.get(model.name, version).signature if version else {}

    # -- versions ------------------------------------------------------------------------------
    async def create_version(self, spec: NewVersion, upload: ReceivedFile) -> VersionRecord:
        """Store the artifact and record the version. A repeated idempotency key returns the first version."""
        check_name("model", spec.model)
        _check_tags(spec.tags)
        if spec.idempotency_key:
            existing = self.store.find_by_key(spec.model, spec.idempotency_key)
            if existing is not None:
                upload.discard()
                return existing
        # Parsing and fsyncing a large artifact takes a while: off the event loop, so other calls go on.
        signature = await asyncio.to_thread(onnx_signature, upload.path)
        await asyncio.to_thread(self.artifacts.put, upload.path, upload.sha256)
        with self.store.transaction() as db:
            self.store.ensure_model(db, spec.model)
            version = self.store.insert_version(
                db,
                {
                    "model": spec.model,
                    "artifact_sha256": upload.sha256,
                    "artifact_size": upload.size,
                    "dataset": spec.dataset,
                    "dataset_version": spec.dataset_version,
                    "run": spec.run,
                    "tags": spec.tags,
                    "signature": signature,
                    "idempotency_key": spec.idempotency_key,
                    "description": spec.description,
                },
            )
            self._enqueue(
                db,
                ModelVersionCreated(
                    source=SOURCE,
                    subject=spec.model,
                    model=spec.model,
                    model_version=version,
                    artifact_sha256=upload.sha256,
                    artifact_size=upload.size,
                    dataset=spec.dataset,
                    dataset_version=spec.dataset_version or None,
                    training_run=spec.run.get("run_id") or None,
                ),
            )
        log.info("registered %s version %d (artifact %s)", spec.model, version, upload.sha256[:12])
        await self._announce()
        return self.store.get(spec.model, version)

    def resolve(
        self, model: str, version: int = 0, alias: str = "", idempotency_key: str = ""
    ) -> VersionRecord:
        check_name("model", model)
        if idempotency_key:
            found = self.store.find_by_key(model, idempotency_key)
            if found is None:
                raise NotFound(f"model {model!r} has no version with idempotency key {idempotency_key!r}")
            return found
        if alias:
            target = self.store.alias_target(model, check_name("alias", alias, ALIAS_PATTERN))
            if target is None:
                raise NotFound(f"model {model!r} has no alias {alias!r}")
            return self.store.get(model, target)
        if version <= 0:
            raise InvalidArgument("give a version number, an alias or an idempotency key")
        return self.store.get(model, version)

    def search(self, query: VersionQuery) -> list[VersionRecord]:
        if query.model:
            check_name("model", query.model)
        if not 1 <= query.limit <= 1000:
            raise InvalidArgument(f"max_results must be within 1..1000, not {query.limit}")
        for condition in query.metrics:
            if not condition.name:
                raise InvalidArgument("a metric filter needs the metric's name")
        return self.store.search(query)

    def update_version(
        self,
        model: str,
        version: int,
        description: str | None,
        set_tags: dict[str, str],
        delete_tags: list[str],
    ) -> VersionRecord:
        self.resolve(model, version)
        _check_tags(set_tags)
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            self.store.update_version(db, model, version, description, set_tags, delete_tags)
        return self.store.get(model, version)

    # -- aliases -------------------------------------------------------------------------------
    async def set_alias(
        self, model: str, alias: str, version: int, actor: str, reason: str, force: bool = False
    ) -> VersionRecord:
        check_name("alias", alias, ALIAS_PATTERN)
        target = self.resolve(model, version)  # NotFound before anything moves
        if target.status == "FAILED" and not force:
            raise FailedPrecondition(
                f"{model} v{version} failed validation; pass force to point {alias!r} at it anyway"
            )
        await self._require_intact_artifact(target, alias)  # force or not: serving would refuse it
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            if alias in TRAFFIC_ALIASES:
                self._no_running_rollout(db, model)
            self._move(db, model, alias, version, actor or "unknown", reason, "set")
            if alias == "champion":
                self._champion_moved(db, model, version, actor or "unknown")
            elif alias in TRAFFIC_ALIASES:
                self._traffic_alias_moved(db, model, actor or "unknown", reason)
            pending = self.store.approval(model, version, db) if alias == "champion" else None
            if pending is not None and pending.status == "pending":  # promoted by hand: that approves it
                self._decide(db, pending, "approved", actor or "unknown", reason or "promoted by hand")
        await self._announce()
        return self.store.get(model, version)

    async def delete_alias(self, model: str, alias: str, actor: str, reason: str) -> int:
        check_name("model", model)
        check_name("alias", alias, ALIAS_PATTERN)
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            previous = self.store.alias_target(model, alias, db)
            if previous is None:
                raise NotFound(f"model {model!r} has no alias {alias!r}")
            if alias in TRAFFIC_ALIASES:
                self._no_running_rollout(db, model)
            self._move(db, model, alias, None, actor or "unknown", reason, "deleted")
            if alias in TRAFFIC_ALIASES:
                self._traffic_alias_moved(db, model, actor or "unknown", reason)
        await self._announce()
        return previous

    async def rollback(self, model: str, actor: str, reason: str) -> VersionRecord:
        """Point `champion` back at the version it held before its latest move, in one transaction
        (so a racing promotion cannot slip between reading the history and moving the alias)."""
        check_name("model", model)
        # Hashing waits outside the transaction; the transaction then checks nothing moved meanwhile.
        intended = self._last_champion_move(model)
        await self._require_intact_artifact(self.store.get(model, intended["from_version"]), "champion")
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            last = self._last_champion_move(model, db)
            if last != intended:
                raise FailedPrecondition(f"the champion of {model!r} moved during the rollback; try again")
            previous = int(last["from_version"])
            why = f"rollback from v{last['to_version']}: {reason}"
            self._move(db, model, "champion", previous, actor or "unknown", why, "rolled_back")
            self._champion_moved(db, model, previous, actor or "unknown")
        await self._announce()
        return self.store.get(model, previous)

    def _last_champion_move(self, model: str, db: sa.Connection | None = None) -> dict[str, Any]:
        """The champion's latest move, which a rollback undoes; refused if there is nothing to undo."""
        moves = [move for move in self.store.history(model, db) if move["alias"] == "champion"]
        if not moves or moves[-1]["from_version"] is None:
            raise FailedPrecondition(f"model {model!r} has no previous champion to roll back to")
        return moves[-1]

    async def _require_intact_artifact(self, target: VersionRecord, alias: str) -> None:
        """An alias never points at bytes that fail their digest check (or are gone): serving
        would refuse them. Hashing runs in a worker thread; the store remembers files it has
        verified, so moving an alias to an unchanged artifact costs a stat, not a hash."""
        try:
            await asyncio.to_thread(self.artifacts.verify, target.artifact_sha256)
        except (NotFound, FailedPrecondition) as exc:
            raise FailedPrecondition(
                f"{alias!r} stays where it was: the artifact of {target.model} v{target.version} "
                f"fails verification ({exc})"
            ) from exc

    def _move(
        self,
        db: sa.Connection,
        model: str,
        alias: str,
        version: int | None,
        actor: str,
        reason: str,
        action: Literal["set", "deleted", "rolled_back"],
        cause: Event | None = None,
        traffic_percent: float | None = None,
    ) -> None:
        """Move an alias, record it in the history and queue its events, all in `db`."""
        previous = self.store.move_alias(db, model, alias, version, actor, reason, traffic_percent)
        common = {"source": SOURCE, "subject": model, "model": model, "actor": actor, "reason": reason}
        lineage = {
            "dataset_version": cause.dataset_version if cause else None,
            "training_run": cause.training_run if cause else None,
        }
        self._enqueue(
            db,
            ModelAliasChanged(
                **common,
                alias=alias,
                model_version=version,
                previous_version=previous,
                action=action,
                **lineage,
            ),
        )
        if alias == "champion" and version is not None and previous != version:
            self._enqueue(
                db, ModelPromoted(**common, model_version=version, previous_version=previous, **lineage)
            )
        PROMOTIONS.labels(model, alias, actor).inc()

    # -- verdicts ------------------------------------------------------------------------------
    async def on_validated(self, event: ModelValidated) -> None:
        """Record the verdict once, set the status and, if it passed, move the alias the model's
        policy asks for.

        Idempotent: a redelivered verdict finds the version already judged and only flushes the
        outbox, which publishes anything a crash left unpublished."""
        record = self.store.get(event.model, event.model_version)
        if record.validation is None:
            reason = f"validation {event.id}: " + ("passed" if event.passed else "failed")
            if event.cause is not None:  # the history says why this version was trained at all
                reason += (
                    f"; retrained because {event.cause.kind} was detected "
                    f"(event {event.cause.event_id}): {event.cause.summary}"
                )
            with self.store.transaction() as db:
                self.store.ensure_model(db, event.model)
                policy = self.effective_policy(self.store.get_model(event.model))
                champion = self.store.alias_target(event.model, "champion", db)
                # A progressive rollout needs a champion to compare with: the first version is it.
                alias = (
                    "champion"
                    if policy == "automatic" or (policy == "progressive" and champion is None)
                    else "challenger"
                )
                self.store.set_validation(db, event.model, event.model_version, event.model_dump(mode="json"))
                status = "READY" if event.passed else "FAILED"
                previous_status = self.store.set_status(db, event.model, event.model_version, status)
                if previous_status != status:
                    self._enqueue(
                        db,
                        ModelVersionStatusChanged(
                            source=SOURCE,
                            subject=event.model,
                            model=event.model,
                            model_version=event.model_version,
                            status=status.lower(),
                            previous_status=previous_status.lower(),
                            reason=reason,
                        ),
                    )
                if event.passed:
                    self._move(db, event.model, alias, event.model_version, "validator", reason, "set", event)
                    if alias == "challenger" and policy == "progressive":  # live traffic decides
                        self._announce_superseded(
                            db,
                            event.model,
                            self.store.supersede_approvals(db, event.model, event.model_version),
                            event.model_version,
                        )
                        self._supersede_rollout(db, event.model, event.model_version, "validator")
                        self._start_rollout(db, event.model, event.model_version, "validator", reason)
                    elif alias == "challenger":  # the manual policy: a person decides
                        self._request_approval(db, event, reason)
                    else:
                        self._champion_moved(db, event.model, event.model_version, "validator")
                        # the policy became automatic while a version awaited approval
                        self._announce_superseded(
                            db,
                            event.model,
                            self.store.supersede_approvals(db, event.model, event.model_version),
                            event.model_version,
                        )
            log.info(
                "%s v%d validation %s",
                event.model,
                event.model_version,
                "passed" if event.passed else "failed",
            )
        await self._announce()

    # -- approvals -----------------------------------------------------------------------------
    def _request_approval(self, db: sa.Connection, event: ModelValidated, reason: str) -> None:
        """The passing challenger awaits approval; an older pending one is closed as superseded."""
        model, version = event.model, event.model_version
        champion = self.store.alias_target(model, "champion", db)
        superseded = self.store.request_approval(db, model, version, "validator", reason, champion)
        self._announce_superseded(db, model, superseded, version)
        self._enqueue(
            db,
            ModelApprovalRequested(
                source=SOURCE,
                subject=model,
                model=model,
                model_version=version,
                champion_version=champion,
                requested_by="validator",
                reason=reason,
                superseded_version=superseded[-1] if superseded else None,
                dataset_version=event.dataset_version,
                training_run=event.training_run,
            ),
        )

    def _announce_superseded(self, db: sa.Connection, model: str, superseded: list[int], by: int) -> None:
        for older in superseded:
            self._enqueue(
                db,
                ModelApprovalDecided(
                    source=SOURCE,
                    subject=model,
                    model=model,
                    model_version=older,
                    decision="superseded",
                    decided_by="registry",
                    reason=f"superseded by v{by}",
                    champion_version=self.store.alias_target(model, "champion", db),
                    superseded_by=by,
                ),
            )

    def approvals(self, model: str = "", status: str = "") -> list[ApprovalRecord]:
        if model:
            check_name("model", model)
        if status and status not in APPROVAL_STATUSES:
            raise InvalidArgument(f"approval status must be one of {', '.join(APPROVAL_STATUSES)}")
        return self.store.approvals(model, status)

    async def approve(self, model: str, version: int, actor: str, reason: str) -> ApprovalRecord:
        """Make a pending version the champion: the same move, history and events as SetAlias
        (so serving swaps to it), with the approval closed in the same transaction."""
        intended = self._pending(model, version, reason)
        await self._require_intact_artifact(self.store.get(model, intended.version), "champion")
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            self._still_pending(db, intended)
            why = f"approved v{intended.version}: {reason}"
            self._move(db, model, "champion", intended.version, actor or "unknown", why, "set")
            self._champion_moved(db, model, intended.version, actor or "unknown")
            self._decide(db, intended, "approved", actor or "unknown", reason)
        log.info("%s v%d approved by %s", model, intended.version, actor)
        await self._announce()
        return self._approval(model, intended.version)

    async def reject(self, model: str, version: int, actor: str, reason: str) -> ApprovalRecord:
        """Close a pending version as rejected; the champion stays where it is."""
        intended = self._pending(model, version, reason)
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            self._still_pending(db, intended)
            self._decide(db, intended, "rejected", actor or "unknown", reason)
        log.info("%s v%d rejected by %s", model, intended.version, actor)
        await self._announce()
        return self._approval(model, intended.version)

    def _pending(self, model: str, version: int, reason: str) -> ApprovalRecord:
        """The approval a decision is about: `version`'s, or the model's pending one for 0."""
        if not reason.strip():
            raise InvalidArgument("give a reason for the decision; it goes into the audit trail")
        self.get_model(model)  # NotFound for an unknown model
        if version <= 0:
            pending = self.store.approvals(model, "pending")
            if not pending:
                raise FailedPrecondition(f"no version of {model!r} is awaiting approval")
            return pending[0]
        self.store.get(model, version)  # NotFound for an unknown version
        found = self.store.approval(model, version)
        if found is None:
            raise FailedPrecondition(f"{model} v{version} is not awaiting approval (none was requested)")
        if found.status != "pending":
            raise FailedPrecondition(f"{model} v{version} is not awaiting approval: {_closed(found)}")
        return found

    def _still_pending(self, db: sa.Connection, intended: ApprovalRecord) -> None:
        """Inside the decision's transaction: nobody decided (or superseded) it meanwhile."""
        now = self.store.approval(intended.model, intended.version, db)
        if now is None or now.status != "pending":
            raise FailedPrecondition(
                f"{intended.model} v{intended.version} is no longer awaiting approval"
                + (f": {_closed(now)}" if now else "")
            )

    def _decide(
        self,
        db: sa.Connection,
        approval: ApprovalRecord,
        decision: Literal["approved", "rejected"],
        actor: str,
        reason: str,
    ) -> None:
        self.store.decide_approval(db, approval.model, approval.version, decision, actor, reason)
        self._enqueue(
            db,
            ModelApprovalDecided(
                source=SOURCE,
                subject=approval.model,
                model=approval.model,
                model_version=approval.version,
                decision=decision,
                decided_by=actor,
                reason=reason,
                champion_version=self.store.alias_target(approval.model, "champion", db),
            ),
        )

    def _approval(self, model: str, version: int) -> ApprovalRecord:
        found = self.store.approval(model, version)
        if found is None:  # written in the transaction that just committed
            raise NotFound(f"{model} v{version} has no approval")
        return found

    def set_training_spec(self, model: str, spec_json: str, actor: str) -> int:
        check_name("model", model)
        try:
            spec = json.loads(spec_json)
        except ValueError as exc:
            raise InvalidArgument(f"the training spec is not JSON: {exc}") from exc
        if not isinstance(spec, dict):
            raise InvalidArgument("the training spec must be a JSON object")
        return self.store.add_training_spec(model, json.dumps(spec, sort_keys=True), actor or "unknown")

    # -- traffic and rollouts ------------------------------------------------------------------
    def get_traffic(self, model: str, db: sa.Connection | None = None) -> TrafficRecord:
        """The model's split and latest rollout; NotFound for an unknown model."""
        check_name("model", model)
        if db is None and not self.store.model_exists(model):  # one query: serving reads this often
            raise NotFound(f"model {model!r} is not registered")
        targets = self._aliases(model, db)
        row = self.store.traffic_row(model, db)
        canary, shadow = targets.get("canary"), targets.get("shadow")
        return TrafficRecord(
            model=model,
            champion_version=targets.get("champion"),
            canary_version=canary,
            canary_percent=float(row["canary_percent"]) if row and canary is not None else 0.0,
            shadow_version=shadow,
            shadow_percent=float(row["shadow_percent"]) if row and shadow is not None else 0.0,
            revision=int(row["revision"]) if row else 0,
            actor=row["actor"] if row else "",
            reason=row["reason"] if row else "",
            updated_at=row["updated_at"] if row else None,
            rollout=self.store.latest_rollout(model, db),
        )

    def _aliases(self, model: str, db: sa.Connection | None) -> dict[str, int]:
        if db is None:
            return self.store.aliases(model)
        return {
            alias: target
            for alias in ("champion", "canary", "shadow")
            if (target := self.store.alias_target(model, alias, db)) is not None
        }

    async def set_traffic(
        self,
        model: str,
        canary: tuple[int, float],
        shadow: tuple[int, float],
        actor: str,
        reason: str,
        expected_revision: int = 0,
    ) -> TrafficRecord:
        """A manual split: `canary` and `shadow` are (version, percent), (0, 0) for none. Refused
        while a rollout runs, which owns the split until it ends, and (`expected_revision` above 0)
        when the split moved on from the revision the caller read."""
        _check_reason(reason)
        before = self.get_traffic(model)
        if before.rollout is not None and before.rollout.running:  # said first: it is what to fix
            self._no_running_rollout(None, model)
        wanted = {"canary": canary, "shadow": shadow}
        for alias, (version, percent) in wanted.items():
            check_percent(f"the {alias} percent", percent)
            if version < 0:
                raise InvalidArgument(f"the {alias} version must be a version number, or 0 for none")
            if (version == 0) != (percent == 0):
                raise InvalidArgument(
                    f"a {alias} needs both a version and a percent above 0 (0 and 0: no {alias})"
                )
            if version and version == before.champion_version:
                raise InvalidArgument(
                    f"v{version} is the champion of {model!r}; it cannot be its own {alias}"
                )
        if canary[0] and canary[0] == shadow[0]:
            raise InvalidArgument(f"v{canary[0]} cannot be both the canary and the shadow")
        for alias, (version, _percent) in wanted.items():
            if version:
                target = self.store.get(model, version)  # NotFound before anything moves
                if target.status == "FAILED":
                    raise FailedPrecondition(f"{model} v{version} failed validation; it takes no traffic")
                await self._require_intact_artifact(target, alias)
        if (canary[0] or shadow[0]) and before.champion_version is None:
            raise FailedPrecondition(f"model {model!r} has no champion to split its traffic with")
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            self._no_running_rollout(db, model)
            if expected_revision > 0:
                row = self.store.traffic_row(model, db)
                now = int(row["revision"]) if row else 0
                if now != expected_revision:
                    raise FailedPrecondition(
                        f"the traffic of {model!r} is at revision {now}, not {expected_revision}: "
                        "it changed meanwhile; read it again"
                    )
            self._split(
                db,
                model,
                canary=(canary[0] or None, canary[1]),
                shadow=(shadow[0] or None, shadow[1]),
                actor=actor or "unknown",
                reason=reason,
                action="set",
            )
        await self._announce()
        return self.get_traffic(model)

    def _traffic_alias_moved(self, db: sa.Connection, model: str, actor: str, reason: str) -> None:
        """`canary` or `shadow` moved as a plain alias (SetAlias, DeleteAlias): the version changed,
        its share did not (none once deleted); a new revision, so serving follows."""
        now = self.get_traffic(model, db)
        canary = now.canary_percent if now.canary_version is not None else 0.0
        shadow = now.shadow_percent if now.shadow_version is not None else 0.0
        revision = self.store.write_traffic(db, model, canary, shadow, actor, reason)
        self._enqueue(
            db,
            ModelTrafficChanged(
                source=SOURCE,
                subject=model,
                model=model,
                revision=revision,
                champion_version=now.champion_version,
                canary_version=now.canary_version if canary else None,
                canary_percent=canary,
                shadow_version=now.shadow_version if shadow else None,
                shadow_percent=shadow,
                action="set",
                actor=actor,
                reason=reason[:MAX_TRAFFIC_REASON],  # the whole in the history; the event stays small
            ),
        )

    def _no_running_rollout(self, db: sa.Connection | None, model: str) -> None:
        rollout = self.store.latest_rollout(model, db)
        if rollout is not None and rollout.running:
            raise FailedPrecondition(
                f"{model} v{rollout.version} is rolling out (step {rollout.step}); abort it first"
            )

    def _split(
        self,
        db: sa.Connection,
        model: str,
        *,
        canary: tuple[int | None, float],
        shadow: tuple[int | None, float],
        actor: str,
        reason: str,
        action: TrafficAction,
    ) -> None:
        """Move `canary` and `shadow` where they are wanted (a move only for what changes, each in
        the alias history with its percent), bump the split's revision and queue ModelTrafficChanged,
        all in `db`, which holds the model."""
        before = self.get_traffic(model, db)
        was = {
            "canary": (before.canary_version, before.canary_percent),
            "shadow": (before.shadow_version, before.shadow_percent),
        }
        wanted = {
            "canary": canary if canary[0] else (None, 0.0),
            "shadow": shadow if shadow[0] else (None, 0.0),
        }
        for alias, (version, percent) in wanted.items():
            if (version, percent) == was[alias]:
                continue
            move: Literal["set", "deleted", "rolled_back"] = (
                "set" if version is not None else "rolled_back" if action == "rolled_back" else "deleted"
            )
            self._move(db, model, alias, version, actor, reason, move, traffic_percent=percent)
        revision = self.store.write_traffic(
            db, model, wanted["canary"][1], wanted["shadow"][1], actor, reason
        )
        rollout = self.store.latest_rollout(model, db)
        follows_rollout = rollout is not None and action != "set"
        self._enqueue(
            db,
            ModelTrafficChanged(
                source=SOURCE,
                subject=model,
                model=model,
                revision=revision,
                champion_version=self.store.alias_target(model, "champion", db),
                canary_version=wanted["canary"][0],
                canary_percent=wanted["canary"][1],
                shadow_version=wanted["shadow"][0],
                shadow_percent=wanted["shadow"][1],
                action=action,
                rollout_version=rollout.version if follows_rollout and rollout else None,
                rollout_step=rollout.step if follows_rollout and rollout else None,
                actor=actor,
                reason=reason[:MAX_TRAFFIC_REASON],  # the whole in the history; the event stays small
            ),
        )

    def _step_split(
        self, rollout_version: int, plan: RolloutPlan, step: int
    ) -> dict[str, tuple[int | None, float]]:
        """The canary and shadow a rollout's step asks for."""
        current = plan.steps[step]
        none: tuple[int | None, float] = (None, 0.0)
        mine: tuple[int | None, float] = (rollout_version, current.percent)
        return {
            "canary": mine if current.stage == "canary" else none,
            "shadow": mine if current.stage == "shadow" else none,
        }

    def rollout_plan(self, model: str) -> RolloutPlan:
        """The model's plan, or the registry's default."""
        self.get_model(model)
        return self.store.rollout_plan(model) or self.default_plan

    def set_rollout_plan(self, model: str, plan: RolloutPlan, actor: str) -> RolloutPlan:
        """Store the model's own plan; a running rollout keeps the plan it started with."""
        self.get_model(model)
        plan.checked()
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            self.store.set_rollout_plan(db, model, plan, actor or "unknown")
        return self.rollout_plan(model)

    async def start_rollout(self, model: str, version: int, actor: str, reason: str) -> TrafficRecord:
        """Roll `version` out through the model's plan from its first step; it becomes the challenger."""
        _check_reason(reason)
        before = self.get_traffic(model)
        if version <= 0:
            raise InvalidArgument("give the version to roll out")
        target = self.store.get(model, version)  # NotFound before anything moves
        if target.status != "READY":
            raise FailedPrecondition(
                f"{model} v{version} "
                + ("failed validation" if target.status == "FAILED" else "is not validated yet")
                + "; only a version that passed validation is rolled out"
            )
        if before.champion_version is None:
            raise FailedPrecondition(f"model {model!r} has no champion to roll v{version} out against")
        if before.champion_version == version:
            raise FailedPrecondition(f"{model} v{version} is the champion already")
        await self._require_intact_artifact(target, "canary")
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            self._no_running_rollout(db, model)
            if self.store.alias_target(model, "challenger", db) != version:
                self._move(
                    db, model, "challenger", version, actor or "unknown", reason or "rollout started", "set"
                )
            self._start_rollout(db, model, version, actor or "unknown", reason)
        await self._announce()
        return self.get_traffic(model)

    def _start_rollout(self, db: sa.Connection, model: str, version: int, actor: str, reason: str) -> None:
        plan = self.store.rollout_plan(model) or self.default_plan
        self.store.start_rollout(db, model, version, plan)
        why = f"rollout of v{version} started" + (f": {reason}" if reason else "")
        self._split(
            db, model, **self._step_split(version, plan, 0), actor=actor, reason=why, action="rollout_started"
        )
        log.info("%s v%d: rollout started (%d steps)", model, version, len(plan.steps))

    def _supersede_rollout(self, db: sa.Connection, model: str, version: int, actor: str) -> None:
        """A newer passing version replaces a rollout still running: it is rolled back first."""
        rollout = self.store.latest_rollout(model, db)
        if rollout is not None and rollout.running and rollout.version != version:
            self._end_rollout(db, rollout, "rolled_back", actor, f"superseded by v{version}")

    def _running(self, db: sa.Connection, model: str, version: int) -> RolloutRecord:
        """The model's running rollout (of `version` when it is not 0), else FailedPrecondition."""
        rollout = self.store.latest_rollout(model, db)
        if rollout is None or not rollout.running:
            raise FailedPrecondition(f"model {model!r} has no rollout running")
        if version and rollout.version != version:
            raise FailedPrecondition(f"the rollout of {model!r} is of v{rollout.version}, not v{version}")
        return rollout

    async def advance_rollout(
        self, model: str, version: int, from_step: int, actor: str, reason: str
    ) -> TrafficRecord:
        """Move the running rollout from `from_step` to its next step, or from its last step make
        the version champion (ModelPromoted, as any promotion) and clear canary and shadow.
        FailedPrecondition when it is not at `from_step`: someone else moved it first."""
        _check_reason(reason)
        before = self.get_traffic(model)
        intended = before.rollout
        if intended is not None and intended.running and from_step == len(intended.plan.steps) - 1:
            await self._require_intact_artifact(self.store.get(model, intended.version), "champion")
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            rollout = self._running(db, model, version)
            if rollout.step != from_step:
                raise FailedPrecondition(
                    f"the rollout of {model} v{rollout.version} is at step {rollout.step}, not {from_step}"
                )
            who = actor or "unknown"
            if from_step + 1 < len(rollout.plan.steps):
                step = from_step + 1
                self.store.update_rollout(db, model, "running", step, "")
                current = rollout.plan.steps[step]
                why = f"rollout of v{rollout.version}: step {step} ({current.stage} {current.percent:g}%)" + (
                    f": {reason}" if reason else ""
                )
                self._split(
                    db,
                    model,
                    **self._step_split(rollout.version, rollout.plan, step),
                    actor=who,
                    reason=why,
                    action="rollout_advanced",
                )
            else:
                why = f"rollout of v{rollout.version} completed its plan" + (f": {reason}" if reason else "")
                self._move(db, model, "champion", rollout.version, who, why, "set")
                self._end_rollout(db, rollout, "promoted", who, why)
        await self._announce()
        return self.get_traffic(model)

    async def abort_rollout(self, model: str, version: int, actor: str, reason: str) -> TrafficRecord:
        """Stop the running rollout: canary and shadow cleared at once, the cause recorded."""
        if not reason.strip():
            raise InvalidArgument("give the cause of the rollback; it goes into the history and the event")
        _check_reason(reason)
        self.get_model(model)
        with self.store.transaction() as db:
            self.store.ensure_model(db, model)
            rollout = self._running(db, model, version)
            self._end_rollout(db, rollout, "rolled_back", actor or "unknown", reason)
        log.warning("%s v%d rolled back: %s", model, rollout.version, reason)
        await self._announce()
        return self.get_traffic(model)

    def _champion_moved(self, db: sa.Connection, model: str, champion: int, actor: str) -> None:
        """A champion moved outside the rollout (by hand, an approval, a rollback, or the validator
        under the automatic policy) ends a running rollout (promoted when it is the rolled-out
        version, else rolled back), and no version stays canary or shadow beside itself."""
        rollout = self.store.latest_rollout(model, db)
        if rollout is not None and rollout.running:
            promoted = rollout.version == champion
            cause = f"the champion was moved to v{champion} outside the rollout, by {actor}"
            self._end_rollout(db, rollout, "promoted" if promoted else "rolled_back", actor, cause)
            return
        split = self.get_traffic(model, db)
        if champion in (split.canary_version, split.shadow_version):
            keep = {
                "canary": (split.canary_version, split.canary_percent),
                "shadow": (split.shadow_version, split.shadow_percent),
            }
            for alias, (version, _percent) in keep.items():
                if version == champion:
                    keep[alias] = (None, 0.0)
            self._split(
                db,
                model,
                **keep,
                actor=actor,
                reason=f"v{champion} became champion",
                action="set",
            )

    def _end_rollout(
        self,
        db: sa.Connection,
        rollout: RolloutRecord,
        state: Literal["promoted", "rolled_back"],
        actor: str,
        cause: str,
    ) -> None:
        self.store.update_rollout(db, rollout.model, state, rollout.step, cause)
        self._split(
            db, rollout.model, canary=(None, 0.0), shadow=(None, 0.0), actor=actor, reason=cause, action=state
        )

    # -- events --------------------------------------------------------------------------------
    def _enqueue(self, db: sa.Connection, event: Event) -> None:
        self.store.enqueue(db, event.type, event.model_dump_json(), webhooks=self.webhooks is not None)

    async def flush_outbox(self) -> bool:
        """Publish what the outbox holds, oldest first, in bounded batches (cascade.outbox); a failure
        leaves the rest for next time. False if another replica holds the outbox's lease."""
        held = await self._outbox.flush()
        self._wake_relay.set()
        return held

    async def _announce(self) -> None:
        """Publish a committed change's events now if Kafka takes them; if not, the change stands
        and the relay publishes them later, so the caller is not told it failed. The relay is woken
        either way, so the change's webhooks go out now rather than at its next round."""
        try:
            await self._outbox.announce(wait=EVENT_WAIT_SECONDS)
        finally:
            self._wake_relay.set()

    async def deliver_webhooks(self, max_attempts: int = 10) -> None:
        """POST every due event; a failure is retried later with exponential backoff (1 s, 2 s, ...
        up to 5 min), and given up after `max_attempts`.

        Only while this replica holds the `webhooks` lease, renewed before each POST; if it lapsed
        (this replica stalled), the rest are left to the replica that took it over, which reads
        them afresh. A POST that outlasts the lease (a stall mid-way) may be made again by the
        other replica: delivery is at least once, and receivers dedupe on the CloudEvent id."""
        if self.webhooks is None or self._webhook_lease is None:
            return
        async with self._delivering:
            await self._deliver_due_webhooks(self._webhook_lease, max_attempts)

    async def _deliver_due_webhooks(self, lease: Lease, max_attempts: int) -> None:
        now = asyncio.get_running_loop().time()
        if self.webhooks is None or now < self._webhook_lease_retry_at:
            return
        if not await asyncio.to_thread(lease.acquire):
            self._webhook_lease_retry_at = now + WEBHOOK_LEASE_RETRY_SECONDS
            return
        for event_id, event_json, attempts_before in await asyncio.to_thread(self.store.due_webhooks):
            if not (lease.fresh() or await asyncio.to_thread(lease.renew)):
                log.info("webhooks: the lease lapsed; the replica that takes it delivers the rest")
                return
            attempts = attempts_before + 1
            try:
                await self.webhooks.deliver(event_json)
            except WebhookError as exc:
                if attempts >= max_attempts:
                    log.error("webhook gave up on event %d after %d attempts: %s", event_id, attempts, exc)
                    self.store.record_webhook(event_id, "failed", attempts, None, str(exc))
                else:
                    retry_at = datetime.now(UTC) + timedelta(seconds=min(2 ** (attempts - 1), 300))
                    log.warning("webhook attempt %d for event %d failed: %s", attempts, event_id, exc)
                    self.store.record_webhook(event_id, "pending", attempts, retry_at, str(exc))
            else:
                self.store.record_webhook(event_id, "delivered", attempts, None, "")

    async def relay(self, interval: float = 1.0, max_webhook_attempts: int = 10) -> None:
        """Forever: publish what a crash, an outage or another replica left in the outbox, and
        deliver webhooks. Runs beside the request handlers, which flush their own events at once.
        While this replica holds the outbox's lease it looks every `poll` seconds (another replica's
        change is its to publish), otherwise every `interval`; on stopping it lets its leases go, so
        another replica takes over at once."""
        try:
            while True:
                pause = interval
                try:
                    if await self.flush_outbox():
                        pause = min(interval, self._outbox.poll)
                except Exception as exc:  # Kafka down: the events wait in the outbox
                    log.warning("outbox: publishing failed, will retry: %s", exc)
                try:
                    await self.deliver_webhooks(max_webhook_attempts)
                except Exception:
                    log.exception("outbox: webhook delivery failed")
                self._wake_relay.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_relay.wait(), pause)
        finally:
            await self.release_leases()

    async def release_leases(self) -> None:
        """Let this replica's outbox and webhook leases go (it is stopping)."""
        await self._outbox.release()
        if self._webhook_lease is not None:
            try:
                await asyncio.to_thread(self._webhook_lease.release)
            except Exception as exc:  # the database is gone: the lease expires by itself
                log.warning("webhooks: could not release the lease, it expires by itself: %s", exc)


def _closed(approval: ApprovalRecord) -> str:
    """How a closed approval ended, in a few words."""
    if approval.status == "superseded":
        return f"superseded by v{approval.superseded_by}"
    return f"{approval.status} by {approval.decided_by}" + (
        f" ({approval.reason})" if approval.reason else ""
    )


def _check_reason(reason: str) -> None:
    if len(reason) > MAX_TRAFFIC_REASON:
        raise InvalidArgument(
            f"the reason is longer than {MAX_TRAFFIC_REASON} characters; say it in a sentence"
        )


def _check_tags(tags: dict[str, str]) -> None:
    for key, value in tags.items():
        if not key or len(key) > 256:
            raise InvalidArgument(f"tag keys must be 1..256 characters, not {key!r}")
        if len(value) > MAX_TAG_VALUE:  # the trainer keeps run records (trials, parity outputs) in tags
            raise InvalidArgument(f"tag {key!r} is longer than {MAX_TAG_VALUE} characters")


class DatasetVersions(Protocol):
    """What lineage asks of ingest (cascade.client.ingest.IngestClient is one)."""

    async def get_dataset_version(self, dataset: str, version: str = "") -> DatasetVersion: ...


class Lineage:
    """Reads a version's lineage: its own record, then the dataset version's batches from ingest."""

    def __init__(self, core: RegistryCore, ingest: DatasetVersions) -> None:
        self.core = core
        self.ingest = ingest

    async def of(self, model: str, version: int) -> tuple[VersionRecord, str, list[str]]:
        """(version record, parent dataset version, raw batch ids oldest first)."""
        record = self.core.resolve(model, version)
        try:
            dataset = await self.ingest.get_dataset_version(record.dataset, record.dataset_version)
        except NotFound as exc:
            raise NotFound(f"ingest no longer knows dataset version {record.dataset_version}") from exc
        return record, dataset.parent, list(dataset.batch_ids)
