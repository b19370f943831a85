"""RegistryService over gRPC: protobuf in and out, the domain in cascade.services.registry.core."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from cascade.errors import InvalidArgument, grpc_errors
from cascade.grpc_io import ServicerContext, file_chunks, receive_to_file, split_upload
from cascade.json_limits import DOCUMENT_LIMITS, check_json_limits
from cascade.names import check_name
from cascade.security import ANY_PRINCIPAL, Principal, audit_actor, current_principal, method_roles
from cascade.services.registry.core import Lineage, NewVersion, RegistryCore
from cascade.services.registry.permissions import Level, Permissions
from cascade.services.registry.rollouts import (
    RolloutPlan,
    RolloutRecord,
    RolloutStep,
    RolloutThresholds,
    Stage,
    TrafficRecord,
)
from cascade.services.registry.store import (
    ApprovalRecord,
    MetricCondition,
    ModelRecord,
    VersionQuery,
    VersionRecord,
)
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name
# Every RPC is open to any authenticated principal; each checks the caller's level on its model.
ROLES = method_roles(
    SERVICE_NAME,
    dict.fromkeys(pb.DESCRIPTOR.services_by_name["RegistryService"].methods_by_name, ANY_PRINCIPAL),
)
_STATUS = {
    "PENDING": pb.VERSION_STATUS_PENDING,
    "READY": pb.VERSION_STATUS_READY,
    "FAILED": pb.VERSION_STATUS_FAILED,
}
_STATUS_NAMES = {number: name for name, number in _STATUS.items()}
_POLICIES = {
    "automatic": pb.PROMOTION_POLICY_AUTOMATIC,
    "manual": pb.PROMOTION_POLICY_MANUAL,
    "progressive": pb.PROMOTION_POLICY_PROGRESSIVE,
}
_POLICY_NAMES = {number: name for name, number in _POLICIES.items()}
_APPROVAL_STATUSES = {
    "pending": pb.APPROVAL_STATUS_PENDING,
    "approved": pb.APPROVAL_STATUS_APPROVED,
    "rejected": pb.APPROVAL_STATUS_REJECTED,
    "superseded": pb.APPROVAL_STATUS_SUPERSEDED,
}
_APPROVAL_STATUS_NAMES = {number: name for name, number in _APPROVAL_STATUSES.items()}
_STAGES: dict[Stage, pb.RolloutStage.ValueType] = {
    "shadow": pb.ROLLOUT_STAGE_SHADOW,
    "canary": pb.ROLLOUT_STAGE_CANARY,
}
_STAGE_NAMES = {number: name for name, number in _STAGES.items()}
_ROLLOUT_STATES = {
    "running": pb.ROLLOUT_STATE_RUNNING,
    "promoted": pb.ROLLOUT_STATE_PROMOTED,
    "rolled_back": pb.ROLLOUT_STATE_ROLLED_BACK,
}
_COMPARISONS = {
    pb.COMPARISON_EQ: "==",
    pb.COMPARISON_NE: "!=",
    pb.COMPARISON_GT: ">",
    pb.COMPARISON_GE: ">=",
    pb.COMPARISON_LT: "<",
    pb.COMPARISON_LE: "<=",
}


_LEVELS: dict[pb.PermissionLevel.ValueType, Level] = {
    pb.PERMISSION_LEVEL_NONE: "none",
    pb.PERMISSION_LEVEL_READ: "read",
    pb.PERMISSION_LEVEL_EDIT: "edit",
    pb.PERMISSION_LEVEL_MANAGE: "manage",
}
_LEVEL_NUMBERS = {name: number for number, name in _LEVELS.items()}


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    """Each method checks its caller's level on the model first (cascade.security authenticated the
    caller; with authentication off, the anonymous caller may do anything), then calls the domain."""

    def __init__(
        self,
        core: RegistryCore,
        lineage: Lineage,
        spool_dir: Path,
        max_artifact_bytes: int,
        permissions: Permissions | None = None,
    ) -> None:
        self.core = core
        self.lineage = lineage
        self.spool_dir = spool_dir
        self.max_artifact_bytes = max_artifact_bytes
        self.permissions = permissions or Permissions(core.store, "manage")

    def _authorize(self, model: str, needed: Level) -> Principal:
        principal = current_principal()
        self.permissions.require(principal, model, needed)
        return principal

    def _authorize_decision(self, model: str) -> None:
        """Deciding an approval needs manage; whoever may read the model learns first whether it
        exists (NOT_FOUND), as GetModel would tell them."""
        check_name("model", model)
        self._authorize(model, "read")
        self.core.get_model(model)
        self._authorize(model, "manage")

    def _own(self, principal: Principal, model: str) -> None:
        if principal.authenticated:
            with self.core.store.transaction() as db:
                self.permissions.grant(db, model, principal.name, "manage")

    @grpc_errors
    async def CreateModelVersion(
        self, request_iterator: AsyncIterator[pb.CreateModelVersionRequest], context: ServicerContext
    ) -> pb.ModelVersion:
        header, chunks = await split_upload(request_iterator, "CreateModelVersion")
        principal = current_principal()
        is_new = not self.core.store.model_exists(header.model)
        if is_new:  # a new model's first version registers it, for its creator to manage
            self.permissions.require_registering(principal)
        else:
            self.permissions.require(principal, header.model, "edit")
        upload = await receive_to_file(chunks, self.spool_dir, self.max_artifact_bytes)
        run = header.run
        spec = NewVersion(
            model=header.model,
            dataset=header.dataset,
            dataset_version=header.dataset_version,
            run={
                "run_id": run.run_id,
                "params": dict(run.params),
                "metrics": dict(run.metrics),
                "seed": run.seed,
                "train_seconds": run.train_seconds,
                "code_version": run.code_version,
            },
            idempotency_key=header.idempotency_key,
            tags=dict(header.tags),
            description=header.description,
        )
        try:
            record = await self.core.create_version(spec, upload)
        finally:
            upload.discard()
        if is_new:
            self._own(principal, record.model)
        return version_message(record)

    @grpc_errors
    async def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: ServicerContext
    ) -> pb.ModelVersion:
        self._authorize(request.model, "read")
        return version_message(
            self.core.resolve(request.model, request.version, request.alias, request.idempotency_key)
        )

    @grpc_errors
    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: ServicerContext
    ) -> pb.ListModelVersionsResponse:
        self._authorize(request.model, "read")
        return pb.ListModelVersionsResponse(
            versions=[
                version_message(r)
                for r in self.core.store.list_versions(request.model, request.dataset_version)
            ]
        )

    @grpc_errors
    async def SearchModelVersions(
        self, request: pb.SearchModelVersionsRequest, context: ServicerContext
    ) -> pb.ListModelVersionsResponse:
        principal = self._authorize(request.model, "read") if request.model else current_principal()
        conditions = []
        for metric in request.metrics:
            if metric.op not in _COMPARISONS:
                raise InvalidArgument(f"metric filter on {metric.name!r} needs a comparison (op)")
            conditions.append(MetricCondition(metric.name, _COMPARISONS[metric.op], metric.value))
        query = VersionQuery(
            model=request.model,
            tags=dict(request.tags),
            metrics=tuple(conditions),
            status=_STATUS_NAMES.get(request.status, ""),
            dataset_version=request.dataset_version,
            limit=request.max_results or 100,
        )
        found = [r for r in self.core.search(query) if self.permissions.can_read(principal, r.model)]
        return pb.ListModelVersionsResponse(versions=[version_message(r) for r in found])

    @grpc_errors
    async def UpdateModelVersion(
        self, request: pb.UpdateModelVersionRequest, context: ServicerContext
    ) -> pb.ModelVersion:
        self._authorize(request.model, "edit")
        record = self.core.update_version(
            request.model,
            request.version,
            request.description if request.HasField("description") else None,
            dict(request.set_tags),
            list(request.delete_tags),
        )
        return version_message(record)

    @grpc_errors
    async def RegisterModel(self, request: pb.RegisterModelRequest, context: ServicerContext) -> pb.Model:
        principal = current_principal()
        self.permissions.require_registering(principal)
        model = self.core.register_model(
            request.name, request.description, _POLICY_NAMES.get(request.promotion_policy), dict(request.tags)
        )
        self._own(principal, model.name)
        return self._model_message(model)

    @grpc_errors
    async def GetModel(self, request: pb.GetModelRequest, context: ServicerContext) -> pb.Model:
        self._authorize(request.name, "read")
        return self._model_message(self.core.get_model(request.name))

    @grpc_errors
    async def UpdateModel(self, request: pb.UpdateModelRequest, context: ServicerContext) -> pb.Model:
        self._authorize(request.name, "manage" if request.promotion_policy else "edit")
        model = self.core.update_model(
            request.name,
            request.description if request.HasField("description") else None,
            _POLICY_NAMES.get(request.promotion_policy),
            dict(request.set_tags),
            list(request.delete_tags),
        )
        return self._model_message(model)

    @grpc_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: ServicerContext
    ) -> pb.ListModelsResponse:
        principal = current_principal()
        readable = [m for m in self.core.store.models() if self.permissions.can_read(principal, m.name)]
        return pb.ListModelsResponse(models=[self._model_message(m) for m in readable])

    @grpc_errors
    async def SetModelPermission(
        self, request: pb.SetModelPermissionRequest, context: ServicerContext
    ) -> pb.Model:
        self._authorize(request.model, "manage")
        self.core.get_model(request.model)
        if request.level not in _LEVELS:
            raise InvalidArgument("give a permission level: NONE, READ, EDIT or MANAGE")
        check_name("principal", request.principal)
        with self.core.store.transaction() as db:
            self.permissions.grant(db, request.model, request.principal, _LEVELS[request.level])
        return self._model_message(self.core.get_model(request.model))

    @grpc_errors
    async def SetAlias(self, request: pb.SetAliasRequest, context: ServicerContext) -> pb.ModelVersion:
        self._authorize(request.model, "manage")
        record = await self.core.set_alias(
            request.model,
            request.alias,
            request.version,
            audit_actor(request.actor),
            request.reason,
            request.force,
        )
        return version_message(record)

    @grpc_errors
    async def DeleteAlias(
        self, request: pb.DeleteAliasRequest, context: ServicerContext
    ) -> pb.DeleteAliasResponse:
        self._authorize(request.model, "manage")
        previous = await self.core.delete_alias(
            request.model, request.alias, audit_actor(request.actor), request.reason
        )
        return pb.DeleteAliasResponse(previous_version=previous)

    @grpc_errors
    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: ServicerContext
    ) -> AsyncIterator[pb.ArtifactChunk]:
        self._authorize(request.model, "read")
        record = self.core.resolve(request.model, request.version)
        # Hashing a large artifact takes a while: off the event loop, so other calls go on.
        path = await asyncio.to_thread(self.core.artifacts.verify, record.artifact_sha256)
        if not 0 <= request.offset <= record.artifact_size:
            raise InvalidArgument(f"offset {request.offset} is outside 0..{record.artifact_size}")
        for offset, data in file_chunks(path, request.offset):
            yield pb.ArtifactChunk(
                data=data, offset=offset, total_size=record.artifact_size, sha256=record.artifact_sha256
            )

    @grpc_errors
    async def Rollback(self, request: pb.RollbackRequest, context: ServicerContext) -> pb.ModelVersion:
        self._authorize(request.model, "manage")
        return version_message(
            await self.core.rollback(request.model, audit_actor(request.actor), request.reason)
        )

    @grpc_errors
    async def GetAliasHistory(
        self, request: pb.GetAliasHistoryRequest, context: ServicerContext
    ) -> pb.AliasHistory:
        check_name("model", request.model)
        self._authorize(request.model, "read")
        moves = []
        for move in self.core.store.history(request.model):
            at = Timestamp()
            at.FromDatetime(move["at"])
            moves.append(
                pb.AliasMove(
                    alias=move["alias"],
                    from_version=move["from_version"] or 0,
                    to_version=move["to_version"] or 0,
                    actor=move["actor"],
                    reason=move["reason"],
                    at=at,
                    traffic_percent=move["traffic_percent"] or 0.0,
                )
            )
        return pb.AliasHistory(model=request.model, moves=moves)

    @grpc_errors
    async def GetLineage(self, request: pb.GetLineageRequest, context: ServicerContext) -> pb.Lineage:
        self._authorize(request.model, "read")
        record, parent, batch_ids = await self.lineage.of(request.model, request.version)
        return pb.Lineage(
            version=version_message(record),
            dataset=record.dataset,
            dataset_version=record.dataset_version,
            parent_dataset_version=parent,
            batch_ids=batch_ids,
        )

    @grpc_errors
    async def SetTrainingSpec(
        self, request: pb.SetTrainingSpecRequest, context: ServicerContext
    ) -> pb.TrainingSpec:
        self._authorize(request.model, "edit")
        max_bytes, max_depth = DOCUMENT_LIMITS  # before parsing: deep nesting would recurse
        check_json_limits(request.spec_json.encode(), max_bytes=max_bytes, max_depth=max_depth)
        version = self.core.set_training_spec(request.model, request.spec_json, audit_actor(request.actor))
        return _spec_message(request.model, *self.core.store.training_spec(request.model, version))

    @grpc_errors
    async def GetTrainingSpec(
        self, request: pb.GetTrainingSpecRequest, context: ServicerContext
    ) -> pb.TrainingSpec:
        check_name("model", request.model)
        self._authorize(request.model, "read")
        return _spec_message(request.model, *self.core.store.training_spec(request.model, request.version))

    @grpc_errors
    async def ListApprovals(
        self, request: pb.ListApprovalsRequest, context: ServicerContext
    ) -> pb.ListApprovalsResponse:
        principal = self._authorize(request.model, "read") if request.model else current_principal()
        found = self.core.approvals(request.model, _APPROVAL_STATUS_NAMES.get(request.status, ""))
        readable = [a for a in found if self.permissions.can_read(principal, a.model)]
        return pb.ListApprovalsResponse(approvals=[approval_message(a) for a in readable])

    @grpc_errors
    async def ApproveVersion(
        self, request: pb.DecideApprovalRequest, context: ServicerContext
    ) -> pb.Approval:
        self._authorize_decision(request.model)
        return approval_message(
            await self.core.approve(
                request.model, request.version, audit_actor(request.actor), request.reason
            )
        )

    @grpc_errors
    async def RejectVersion(self, request: pb.DecideApprovalRequest, context: ServicerContext) -> pb.Approval:
        self._authorize_decision(request.model)
        return approval_message(
            await self.core.reject(request.model, request.version, audit_actor(request.actor), request.reason)
        )

    # -- progressive delivery ------------------------------------------------------------------
    @grpc_errors
    async def GetTraffic(self, request: pb.GetTrafficRequest, context: ServicerContext) -> pb.Traffic:
        check_name("model", request.model)
        self._authorize(request.model, "read")
        return traffic_message(self.core.get_traffic(request.model))

    @grpc_errors
    async def SetTraffic(self, request: pb.SetTrafficRequest, context: ServicerContext) -> pb.Traffic:
        check_name("model", request.model)
        self._authorize(request.model, "manage")
        return traffic_message(
            await self.core.set_traffic(
                request.model,
                (request.canary_version, request.canary_percent),
                (request.shadow_version, request.shadow_percent),
                audit_actor(request.actor),
                request.reason,
                request.expected_revision,
            )
        )

    @grpc_errors
    async def GetRolloutPlan(
        self, request: pb.GetRolloutPlanRequest, context: ServicerContext
    ) -> pb.RolloutPlan:
        check_name("model", request.model)
        self._authorize(request.model, "read")
        return plan_message(request.model, self.core.rollout_plan(request.model))

    @grpc_errors
    async def SetRolloutPlan(
        self, request: pb.SetRolloutPlanRequest, context: ServicerContext
    ) -> pb.RolloutPlan:
        check_name("model", request.model)
        self._authorize(request.model, "manage")
        plan = plan_of(request.steps, request.thresholds)
        return plan_message(
            request.model, self.core.set_rollout_plan(request.model, plan, audit_actor(request.actor))
        )

    @grpc_errors
    async def StartRollout(self, request: pb.StartRolloutRequest, context: ServicerContext) -> pb.Traffic:
        check_name("model", request.model)
        self._authorize(request.model, "manage")
        return traffic_message(
            await self.core.start_rollout(
                request.model, request.version, audit_actor(request.actor), request.reason
            )
        )

    @grpc_errors
    async def AdvanceRollout(self, request: pb.AdvanceRolloutRequest, context: ServicerContext) -> pb.Traffic:
        check_name("model", request.model)
        self.permissions.require_rollout_move(current_principal(), request.model)
        return traffic_message(
            await self.core.advance_rollout(
                request.model, request.version, request.from_step, audit_actor(request.actor), request.reason
            )
        )

    @grpc_errors
    async def AbortRollout(self, request: pb.AbortRolloutRequest, context: ServicerContext) -> pb.Traffic:
        check_name("model", request.model)
        self.permissions.require_rollout_move(current_principal(), request.model)
        return traffic_message(
            await self.core.abort_rollout(
                request.model, request.version, audit_actor(request.actor), request.reason
            )
        )

    def _model_message(self, model: ModelRecord) -> pb.Model:
        signature = self.core.signature(model)
        return pb.Model(
            name=model.name,
            latest_version=model.latest_version,
            aliases=model.aliases,
            description=model.description,
            tags=model.tags,
            promotion_policy=_POLICIES.get(model.promotion_policy or "", pb.PROMOTION_POLICY_UNSPECIFIED),
            effective_promotion_policy=_POLICIES[self.core.effective_policy(model)],
            inputs=[pb.TensorSpec(**spec) for spec in signature.get("inputs", [])],
            outputs=[pb.TensorSpec(**spec) for spec in signature.get("outputs", [])],
            created_at=_timestamp(model.created_at),
            permissions={
                principal: _LEVEL_NUMBERS[level]
                for principal, level in self.permissions.grants(model.name).items()
            },
        )


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def plan_of(steps: Sequence[pb.RolloutStep], thresholds: pb.RolloutThresholds) -> RolloutPlan:
    """A plan from its messages, checked (InvalidArgument naming its first flaw)."""
    chosen = []
    for index, step in enumerate(steps):
        if step.stage not in _STAGE_NAMES:
            raise InvalidArgument(f"step {index}: give its stage, SHADOW or CANARY")
        chosen.append(
            RolloutStep(_STAGE_NAMES[step.stage], step.percent, step.min_requests, step.min_seconds)
        )
    return RolloutPlan(
        steps=tuple(chosen),
        thresholds=RolloutThresholds(
            max_error_rate=thresholds.max_error_rate,
            max_p99_ratio=thresholds.max_p99_ratio,
            p99_floor_ms=thresholds.p99_floor_ms,
            min_agreement=thresholds.min_agreement,
            max_difference_ratio=thresholds.max_difference_ratio,
            max_prediction_drift=thresholds.max_prediction_drift,
            max_metric_drop=thresholds.max_metric_drop,
            min_compared_rows=thresholds.min_compared_rows,
        ),
        is_default=False,
    ).checked()


def plan_message(model: str, plan: RolloutPlan) -> pb.RolloutPlan:
    message = pb.RolloutPlan(
        model=model,
        steps=[
            pb.RolloutStep(
                stage=_STAGES[step.stage],
                percent=step.percent,
                min_requests=step.min_requests,
                min_seconds=step.min_seconds,
            )
            for step in plan.steps
        ],
        thresholds=pb.RolloutThresholds(**asdict(plan.thresholds)),
        is_default=plan.is_default,
        actor=plan.actor,
    )
    if plan.updated_at is not None:
        message.updated_at.CopyFrom(_timestamp(plan.updated_at))
    return message


def rollout_message(rollout: RolloutRecord) -> pb.Rollout:
    return pb.Rollout(
        version=rollout.version,
        state=_ROLLOUT_STATES.get(rollout.state, pb.ROLLOUT_STATE_UNSPECIFIED),
        step=rollout.step,
        started_at=_timestamp(rollout.started_at),
        step_started_at=_timestamp(rollout.step_started_at),
        cause=rollout.cause,
        plan=plan_message(rollout.model, rollout.plan),
    )


def traffic_message(traffic: TrafficRecord) -> pb.Traffic:
    message = pb.Traffic(
        model=traffic.model,
        champion_version=traffic.champion_version or 0,
        canary_version=traffic.canary_version or 0,
        canary_percent=traffic.canary_percent,
        shadow_version=traffic.shadow_version or 0,
        shadow_percent=traffic.shadow_percent,
        revision=traffic.revision,
        actor=traffic.actor,
        reason=traffic.reason,
    )
    if traffic.updated_at is not None:
        message.updated_at.CopyFrom(_timestamp(traffic.updated_at))
    if traffic.rollout is not None:
        message.rollout.CopyFrom(rollout_message(traffic.rollout))
    return message


def approval_message(approval: ApprovalRecord) -> pb.Approval:
    message = pb.Approval(
        model=approval.model,
        version=approval.version,
        status=_APPROVAL_STATUSES.get(approval.status, pb.APPROVAL_STATUS_UNSPECIFIED),
        requested_by=approval.requested_by,
        requested_at=_timestamp(approval.requested_at),
        request_reason=approval.request_reason,
        champion_version=approval.champion_version or 0,
        decided_by=approval.decided_by or "",
        reason=approval.reason or "",
        superseded_by=approval.superseded_by or 0,
    )
    if approval.decided_at is not None:
        message.decided_at.CopyFrom(_timestamp(approval.decided_at))
    return message


def _spec_message(model: str, version: int, spec_json: str, actor: str, created: datetime) -> pb.TrainingSpec:
    at = Timestamp()
    at.FromDatetime(created)
    return pb.TrainingSpec(model=model, version=version, spec_json=spec_json, actor=actor, created_at=at)


def version_message(record: VersionRecord) -> pb.ModelVersion:
    created = Timestamp()
    created.FromDatetime(record.created_at)
    run = record.run
    return pb.ModelVersion(
        model=record.model,
        version=record.version,
        status=_STATUS.get(record.status, pb.VERSION_STATUS_UNSPECIFIED),
        artifact_sha256=record.artifact_sha256,
        artifact_size=record.artifact_size,
        dataset=record.dataset,
        dataset_version=record.dataset_version,
        run=pb.TrainingRun(
            run_id=run.get("run_id", ""),
            params=run.get("params", {}),
            metrics=run.get("metrics", {}),
            seed=run.get("seed", 0),
            train_seconds=run.get("train_seconds", 0.0),
            code_version=run.get("code_version", ""),
        ),
        aliases=record.aliases,
        tags=record.tags,
        inputs=[pb.TensorSpec(**spec) for spec in record.signature.get("inputs", [])],
        outputs=[pb.TensorSpec(**spec) for spec in record.signature.get("outputs", [])],
        created_at=created,
        idempotency_key=record.idempotency_key or "",
        description=record.description,
        validation=pb.ValidationSummary(
            passed=bool(record.validation and record.validation.get("passed")),
            report_json=json.dumps(record.validation) if record.validation else "",
        ),
    )
