"""The typed client of the registry: models, versions, aliases with their history, lineage, training
specs, artifacts (uploaded in chunks, downloaded verified and resumable), approvals, and progressive
delivery (traffic splits, rollout plans and rollouts). Plain values in, records out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cascade.client.base import ServiceClient
from cascade.client.calls import RemoteService, call
from cascade.client.downloads import verified_download
from cascade.client.records import (
    AliasMove,
    Approval,
    ApprovalStatus,
    Lineage,
    Model,
    ModelVersion,
    RolloutPlan,
    RolloutStep,
    RolloutThresholds,
    StoredTrainingSpec,
    Traffic,
    TrainingRun,
    VersionStatus,
)
from cascade.errors import InvalidArgument
from cascade.grpc_io import CHUNK_SIZE
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc as pb_grpc

__all__ = ["MetricFilter", "PermissionLevel", "PromotionPolicy", "RegistryClient"]

PromotionPolicy = Literal["automatic", "manual", "progressive"]
PermissionLevel = Literal["none", "read", "edit", "manage"]
Comparison = Literal["==", "!=", ">", ">=", "<", "<="]

_POLICIES: dict[PromotionPolicy | None, pb.PromotionPolicy.ValueType] = {
    None: pb.PROMOTION_POLICY_UNSPECIFIED,
    "automatic": pb.PROMOTION_POLICY_AUTOMATIC,
    "manual": pb.PROMOTION_POLICY_MANUAL,
    "progressive": pb.PROMOTION_POLICY_PROGRESSIVE,
}
_LEVELS: dict[PermissionLevel, pb.PermissionLevel.ValueType] = {
    "none": pb.PERMISSION_LEVEL_NONE,
    "read": pb.PERMISSION_LEVEL_READ,
    "edit": pb.PERMISSION_LEVEL_EDIT,
    "manage": pb.PERMISSION_LEVEL_MANAGE,
}
_APPROVAL_STATUSES: dict[ApprovalStatus | None, pb.ApprovalStatus.ValueType] = {
    None: pb.APPROVAL_STATUS_UNSPECIFIED,
    "pending": pb.APPROVAL_STATUS_PENDING,
    "approved": pb.APPROVAL_STATUS_APPROVED,
    "rejected": pb.APPROVAL_STATUS_REJECTED,
    "superseded": pb.APPROVAL_STATUS_SUPERSEDED,
}
_COMPARISONS: dict[Comparison, pb.Comparison.ValueType] = {
    "==": pb.COMPARISON_EQ,
    "!=": pb.COMPARISON_NE,
    ">": pb.COMPARISON_GT,
    ">=": pb.COMPARISON_GE,
    "<": pb.COMPARISON_LT,
    "<=": pb.COMPARISON_LE,
}


@dataclass(frozen=True)
class MetricFilter:
    """A condition on a version's metric for `search_versions`: a training-run metric
    (`cv_accuracy`) or a validator metric as `validation.<name>`."""

    name: str
    op: Comparison
    value: float


class RegistryClient(ServiceClient):
    """The registry's RPCs as async methods. Failures are Cascade errors (cascade.errors) naming
    the registry and what was being done; `timeout` (seconds) bounds every call, None: no bound."""

    SERVICE = "registry"

    def __init__(self, service: RemoteService, *, timeout: float | None = None) -> None:
        super().__init__(service, timeout=timeout)
        self._stub = pb_grpc.RegistryServiceStub(service.channel)

    # -- models --------------------------------------------------------------------------------
    async def register_model(
        self,
        name: str,
        *,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        promotion_policy: PromotionPolicy | None = None,
    ) -> Model:
        """Register a model before its first version; AlreadyExists when the name is taken."""
        request = pb.RegisterModelRequest(
            name=name, description=description, tags=tags or {}, promotion_policy=_POLICIES[promotion_policy]
        )
        response = await call(
            self.service,
            f"registering model {name}",
            lambda: self._stub.RegisterModel(request, timeout=self.timeout),
        )
        return Model.of(response)

    async def get_model(self, name: str) -> Model:
        response = await call(
            self.service,
            f"reading model {name}",
            lambda: self._stub.GetModel(pb.GetModelRequest(name=name), timeout=self.timeout),
        )
        return Model.of(response)

    async def list_models(self) -> list[Model]:
        response = await call(
            self.service,
            "listing models",
            lambda: self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout),
        )
        return [Model.of(m) for m in response.models]

    async def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        delete_tags: Sequence[str] = (),
        promotion_policy: PromotionPolicy | None = None,
        actor: str = "",
    ) -> Model:
        """Edit a model's description, tags and promotion policy (None: leave it as it is)."""
        request = pb.UpdateModelRequest(
            name=name,
            set_tags=set_tags or {},
            delete_tags=delete_tags,
            promotion_policy=_POLICIES[promotion_policy],
            actor=actor,
        )
        if description is not None:
            request.description = description
        response = await call(
            self.service,
            f"updating model {name}",
            lambda: self._stub.UpdateModel(request, timeout=self.timeout),
        )
        return Model.of(response)

    async def set_model_permission(self, name: str, principal: str, level: PermissionLevel) -> Model:
        """Grant `principal` a level on one model; "none" revokes."""
        request = pb.SetModelPermissionRequest(model=name, principal=principal, level=_LEVELS[level])
        response = await call(
            self.service,
            f"granting {principal} {level} on {name}",
            lambda: self._stub.SetModelPermission(request, timeout=self.timeout),
        )
        return Model.of(response)

    # -- versions ------------------------------------------------------------------------------
    async def create_version(
        self,
        model: str,
        artifact: bytes,
        *,
        dataset: str = "",
        dataset_version: str = "",
        run: TrainingRun | None = None,
        idempotency_key: str = "",
        tags: Mapping[str, str] | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Register an ONNX artifact as a new version, streamed in chunks. A repeated
        idempotency key returns the version it created the first time."""
        header = pb.VersionHeader(
            model=model,
            dataset=dataset,
            dataset_version=dataset_version,
            run=_run_message(run) if run is not None else None,
            idempotency_key=idempotency_key,
            tags=tags or {},
            description=description,
        )
        response = await call(
            self.service,
            f"uploading a version of {model}",
            lambda: self._stub.CreateModelVersion(_version_requests(header, artifact), timeout=self.timeout),
        )
        return ModelVersion.of(response)

    async def get_version(
        self,
        model: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        idempotency_key: str | None = None,
    ) -> ModelVersion:
        """One version, chosen by exactly one of its number, an alias or the idempotency key it
        was created with; NotFound when there is none."""
        if sum(s is not None for s in (version, alias, idempotency_key)) != 1:
            raise InvalidArgument("give exactly one of a version number, an alias or an idempotency key")
        if version is not None:
            request, what = pb.GetModelVersionRequest(model=model, version=version), f"{model} v{version}"
        elif alias is not None:
            request, what = pb.GetModelVersionRequest(model=model, alias=alias), f"{model}@{alias}"
        else:
            key = idempotency_key or ""
            request = pb.GetModelVersionRequest(model=model, idempotency_key=key)
            what = f"the version of {model} with idempotency key {key}"
        response = await call(
            self.service,
            f"reading {what}",
            lambda: self._stub.GetModelVersion(request, timeout=self.timeout),
        )
        return ModelVersion.of(response)

    async def list_versions(self, model: str, dataset_version: str = "") -> list[ModelVersion]:
        """A model's versions, oldest first; only those trained on `dataset_version` when given."""
        request = pb.ListModelVersionsRequest(model=model, dataset_version=dataset_version)
        response = await call(
            self.service,
            f"listing the versions of {model}",
            lambda: self._stub.ListModelVersions(request, timeout=self.timeout),
        )
        return [ModelVersion.of(v) for v in response.versions]

    async def search_versions(
        self,
        model: str = "",
        *,
        tags: Mapping[str, str] | None = None,
        metrics: Sequence[MetricFilter] = (),
        status: VersionStatus | None = None,
        dataset_version: str = "",
        max_results: int = 0,
    ) -> list[ModelVersion]:
        """Versions of one model (or of all, `model` empty), newest first, that carry every tag
        given, meet every metric filter and have the status and dataset version given.
        `max_results` 0 means the registry's default (100)."""
        request = pb.SearchModelVersionsRequest(
            model=model,
            tags=tags or {},
            metrics=[pb.MetricFilter(name=m.name, op=_COMPARISONS[m.op], value=m.value) for m in metrics],
            status=(status or VersionStatus.unspecified).proto,
            dataset_version=dataset_version,
            max_results=max_results,
        )
        response = await call(
            self.service,
            f"searching the versions of {model or 'every model'}",
            lambda: self._stub.SearchModelVersions(request, timeout=self.timeout),
        )
        return [ModelVersion.of(v) for v in response.versions]

    async def update_version(
        self,
        model: str,
        version: int,
        *,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        delete_tags: Sequence[str] = (),
    ) -> ModelVersion:
        """Edit a version's description (None: leave it) and tags."""
        request = pb.UpdateModelVersionRequest(
            model=model, version=version, set_tags=set_tags or {}, delete_tags=delete_tags
        )
        if description is not None:
            request.description = description
        response = await call(
            self.service,
            f"updating {model} v{version}",
            lambda: self._stub.UpdateModelVersion(request, timeout=self.timeout),
        )
        return ModelVersion.of(response)

    async def download_artifact(self, model: str, version: int) -> bytes:
        """A version's ONNX bytes, verified against their sha256 and resumed when the stream breaks."""

        def request_from(offset: int) -> Any:
            request = pb.DownloadArtifactRequest(model=model, version=version, offset=offset)
            return self._stub.DownloadArtifact(request, timeout=self.timeout)

        return await verified_download(
            self.service, f"downloading the artifact of {model} v{version}", request_from
        )

    async def lineage(self, model: str, version: int) -> Lineage:
        """Which data a version was trained on, down to the raw batches."""
        request = pb.GetLineageRequest(model=model, version=version)
        response = await call(
            self.service,
            f"reading the lineage of {model} v{version}",
            lambda: self._stub.GetLineage(request, timeout=self.timeout),
        )
        return Lineage.of(response)

    # -- aliases -------------------------------------------------------------------------------
    async def set_alias(
        self, model: str, alias: str, version: int, *, actor: str = "", reason: str = "", force: bool = False
    ) -> ModelVersion:
        """Point `alias` at a version; `force` allows a version that failed validation."""
        request = pb.SetAliasRequest(
            model=model, alias=alias, version=version, actor=actor, reason=reason, force=force
        )
        response = await call(
            self.service,
            f"pointing {model}@{alias} at v{version}",
            lambda: self._stub.SetAlias(request, timeout=self.timeout),
        )
        return ModelVersion.of(response)

    async def delete_alias(self, model: str, alias: str, *, actor: str = "", reason: str = "") -> int:
        """Delete an alias; the version it pointed at."""
        request = pb.DeleteAliasRequest(model=model, alias=alias, actor=actor, reason=reason)
        response = await call(
            self.service,
            f"deleting {model}@{alias}",
            lambda: self._stub.DeleteAlias(request, timeout=self.timeout),
        )
        return response.previous_version

    async def rollback(self, model: str, *, actor: str = "", reason: str = "") -> ModelVersion:
        """Move `champion` back to the version it pointed at before its latest move."""
        request = pb.RollbackRequest(model=model, actor=actor, reason=reason)
        response = await call(
            self.service,
            f"rolling back {model}",
            lambda: self._stub.Rollback(request, timeout=self.timeout),
        )
        return ModelVersion.of(response)

    async def alias_history(self, model: str) -> list[AliasMove]:
        """Every alias move of a model, oldest first."""
        response = await call(
            self.service,
            f"reading the alias history of {model}",
            lambda: self._stub.GetAliasHistory(pb.GetAliasHistoryRequest(model=model), timeout=self.timeout),
        )
        return [AliasMove.of(m) for m in response.moves]

    # -- approvals -----------------------------------------------------------------------------
    async def list_approvals(self, model: str = "", status: ApprovalStatus | None = None) -> list[Approval]:
        """Approvals of `model` (empty: every model the caller may read), newest first, optionally
        only those with `status`."""
        request = pb.ListApprovalsRequest(model=model, status=_APPROVAL_STATUSES[status])
        response = await call(
            self.service,
            f"listing the approvals of {model or 'every model'}",
            lambda: self._stub.ListApprovals(request, timeout=self.timeout),
        )
        return [Approval.of(a) for a in response.approvals]

    async def approve_version(
        self, model: str, version: int = 0, *, reason: str, actor: str = ""
    ) -> Approval:
        """Approve a version awaiting approval (0: the model's pending one): it becomes champion,
        and serving follows. Needs the manage level; `reason` is required."""
        request = pb.DecideApprovalRequest(model=model, version=version, reason=reason, actor=actor)
        response = await call(
            self.service,
            f"approving {_named(model, version)}",
            lambda: self._stub.ApproveVersion(request, timeout=self.timeout),
        )
        return Approval.of(response)

    async def reject_version(self, model: str, version: int = 0, *, reason: str, actor: str = "") -> Approval:
        """Reject a version awaiting approval (0: the model's pending one); the champion stays."""
        request = pb.DecideApprovalRequest(model=model, version=version, reason=reason, actor=actor)
        response = await call(
            self.service,
            f"rejecting {_named(model, version)}",
            lambda: self._stub.RejectVersion(request, timeout=self.timeout),
        )
        return Approval.of(response)

    # -- progressive delivery ------------------------------------------------------------------
    async def get_traffic(self, model: str) -> Traffic:
        """The model's split (champion, canary and shadow with their percents) and latest rollout."""
        response = await call(
            self.service,
            f"reading the traffic of {model}",
            lambda: self._stub.GetTraffic(pb.GetTrafficRequest(model=model), timeout=self.timeout),
        )
        return Traffic.of(response)

    async def set_traffic(
        self,
        model: str,
        *,
        canary_version: int = 0,
        canary_percent: float = 0.0,
        shadow_version: int = 0,
        shadow_percent: float = 0.0,
        actor: str = "",
        reason: str = "",
        expected_revision: int = 0,
    ) -> Traffic:
        """Set the split by hand (a version 0 with percent 0: none); the whole split is given, so
        what is left out is cleared. FailedPrecondition while a rollout runs, or (with
        `expected_revision`, the revision read) when the split changed since it was read."""
        request = pb.SetTrafficRequest(
            model=model,
            canary_version=canary_version,
            canary_percent=canary_percent,
            shadow_version=shadow_version,
            shadow_percent=shadow_percent,
            actor=actor,
            reason=reason,
            expected_revision=expected_revision,
        )
        response = await call(
            self.service,
            f"setting the traffic of {model}",
            lambda: self._stub.SetTraffic(request, timeout=self.timeout),
        )
        return Traffic.of(response)

    async def get_rollout_plan(self, model: str) -> RolloutPlan:
        """The model's rollout plan, or the registry's default (is_default) when it set none."""
        response = await call(
            self.service,
            f"reading the rollout plan of {model}",
            lambda: self._stub.GetRolloutPlan(pb.GetRolloutPlanRequest(model=model), timeout=self.timeout),
        )
        return RolloutPlan.of(response)

    async def set_rollout_plan(
        self,
        model: str,
        steps: Sequence[RolloutStep],
        thresholds: RolloutThresholds | None = None,
        *,
        actor: str = "",
    ) -> RolloutPlan:
        """Give the model its own plan (thresholds default to RolloutThresholds()); rollouts that
        start afterwards follow it."""
        request = pb.SetRolloutPlanRequest(
            model=model,
            steps=[step.proto for step in steps],
            thresholds=(thresholds or RolloutThresholds()).proto,
            actor=actor,
        )
        response = await call(
            self.service,
            f"setting the rollout plan of {model}",
            lambda: self._stub.SetRolloutPlan(request, timeout=self.timeout),
        )
        return RolloutPlan.of(response)

    async def start_rollout(self, model: str, version: int, *, actor: str = "", reason: str = "") -> Traffic:
        """Roll a version that passed validation out through the model's plan, from its first step."""
        request = pb.StartRolloutRequest(model=model, version=version, actor=actor, reason=reason)
        response = await call(
            self.service,
            f"starting the rollout of {model} v{version}",
            lambda: self._stub.StartRollout(request, timeout=self.timeout),
        )
        return Traffic.of(response)

    async def advance_rollout(
        self, model: str, version: int, from_step: int, *, actor: str = "", reason: str = ""
    ) -> Traffic:
        """Move the running rollout from `from_step` to its next step (from the last: the version
        becomes champion). FailedPrecondition when it is no longer at `from_step`."""
        request = pb.AdvanceRolloutRequest(
            model=model, version=version, from_step=from_step, actor=actor, reason=reason
        )
        response = await call(
            self.service,
            f"advancing the rollout of {model} v{version} from step {from_step}",
            lambda: self._stub.AdvanceRollout(request, timeout=self.timeout),
        )
        return Traffic.of(response)

    async def abort_rollout(self, model: str, version: int = 0, *, reason: str, actor: str = "") -> Traffic:
        """Roll the running rollout back (of `version`, or whichever runs for 0): all traffic to the
        champion at once; `reason` (the cause) is required."""
        request = pb.AbortRolloutRequest(model=model, version=version, actor=actor, reason=reason)
        response = await call(
            self.service,
            f"aborting the rollout of {_named(model, version) if version else model}",
            lambda: self._stub.AbortRollout(request, timeout=self.timeout),
        )
        return Traffic.of(response)

    # -- training specs ------------------------------------------------------------------------
    async def get_training_spec(self, model: str, version: int = 0) -> StoredTrainingSpec:
        """A model's training spec (0: the latest); NotFound when it has none."""
        request = pb.GetTrainingSpecRequest(model=model, version=version)
        response = await call(
            self.service,
            f"reading the training spec of {model}",
            lambda: self._stub.GetTrainingSpec(request, timeout=self.timeout),
        )
        return StoredTrainingSpec.of(response)

    async def set_training_spec(self, model: str, spec_json: str, actor: str = "") -> StoredTrainingSpec:
        """Store a new version of a model's training spec (a JSON object)."""
        request = pb.SetTrainingSpecRequest(model=model, spec_json=spec_json, actor=actor)
        response = await call(
            self.service,
            f"storing the training spec of {model}",
            lambda: self._stub.SetTrainingSpec(request, timeout=self.timeout),
        )
        return StoredTrainingSpec.of(response)


def _named(model: str, version: int) -> str:
    return f"{model} v{version}" if version else f"{model}'s pending version"


def _run_message(run: TrainingRun) -> pb.TrainingRun:
    return pb.TrainingRun(
        run_id=run.run_id,
        params=run.params,
        metrics=run.metrics,
        seed=run.seed,
        train_seconds=run.train_seconds,
        code_version=run.code_version,
    )


async def _version_requests(
    header: pb.VersionHeader, artifact: bytes
) -> AsyncIterator[pb.CreateModelVersionRequest]:
    """The CreateModelVersion stream: the header first, then the artifact in chunks."""
    yield pb.CreateModelVersionRequest(header=header)
    for start in range(0, len(artifact), CHUNK_SIZE):
        yield pb.CreateModelVersionRequest(chunk=artifact[start : start + CHUNK_SIZE])
