"""Approvals under the manual policy, through a real authenticating server and the typed client: a
passing candidate awaits approval; someone who manages the model approves it (it becomes champion,
announced exactly as a promotion) or rejects it (the champion stays); a newer passing candidate
supersedes it; the wrong caller, version or missing reason is refused with the right status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cascade.client.calls import RemoteService
from cascade.client.channels import ClientSecurity
from cascade.client.ingest import IngestClient
from cascade.client.registry import RegistryClient
from cascade.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from cascade.events import (
    Event,
    ModelAliasChanged,
    ModelApprovalDecided,
    ModelApprovalRequested,
    ModelPromoted,
    ModelValidated,
)
from cascade.grpc_io import open_channel
from cascade.security import Authenticator, AuthInterceptor, PrincipalEntry, Principals, hash_token
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import Lineage, RegistryCore
from cascade.services.registry.grpc_api import ROLES, RegistryServicer
from cascade.services.registry.permissions import Permissions
from cascade.services.registry.store import RegistryStore
from cascade.services.trainer.training import TrainingResult
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.grpc_server import serving

# alice registers (and so manages) the models; bob only reads them, as the default level allows.
PRINCIPALS = Principals(
    PrincipalEntry(name, frozenset(roles), hash_token(f"{name}-token-0123456789"))
    for name, roles in {"alice": {"registry:register"}, "bob": set[str]()}.items()
)


@dataclass
class Approvals:
    core: RegistryCore
    published: list[Event]
    connect: Callable[[str], AbstractAsyncContextManager[RegistryClient]]

    def events(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.published if isinstance(e, kind)]

    async def candidate(self, registry: RegistryClient, onnx_bytes: bytes, passed: bool = True) -> int:
        """Upload a version and hand the registry the validator's verdict on it."""
        version = await registry.create_version("bc", onnx_bytes, dataset="bc", dataset_version="d1")
        await self.core.on_validated(
            ModelValidated(
                source="v", subject="bc", model="bc", model_version=version.version, passed=passed, gates=[]
            )
        )
        return version.version


@pytest.fixture
async def approvals(tmp_path: Path, database_url: str) -> AsyncIterator[Approvals]:
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    store = RegistryStore(database_url)
    core = RegistryCore(store, LocalArtifactStore(tmp_path / "a"), publish, "automatic")
    unused_ingest = IngestClient.connect("127.0.0.1:9")
    servicer = RegistryServicer(
        core, Lineage(core, unused_ingest), tmp_path / "spool", 10_000_000, Permissions(store, "read")
    )
    auth = AuthInterceptor(Authenticator(PRINCIPALS, required=True), ROLES)

    def register(server: grpc.aio.Server) -> None:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

    async with serving(register, [auth]) as address:

        @asynccontextmanager
        async def connect(name: str) -> AsyncIterator[RegistryClient]:
            security = ClientSecurity(token=f"{name}-token-0123456789")
            async with open_channel(address, security) as channel:
                yield RegistryClient(RemoteService("registry", channel), timeout=10)

        yield Approvals(core, published, connect)
    await unused_ingest.close()
    store.close()


async def _manual_model(registry: RegistryClient) -> None:
    await registry.register_model("bc", promotion_policy="manual")


async def test_a_passing_candidate_awaits_approval_and_approving_it_promotes_it_as_promote_would(
    approvals: Approvals, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with approvals.connect("alice") as alice:
        await _manual_model(alice)
        assert await approvals.candidate(alice, onnx_bytes) == 1
        [pending] = await alice.list_approvals("bc")
        assert (pending.version, pending.status, pending.requested_by) == (1, "pending", "validator")
        assert pending.champion_version == 0 and pending.decided_by == "" and pending.decided_at is None
        assert (await alice.get_model("bc")).aliases == {"challenger": 1}
        [requested] = approvals.events(ModelApprovalRequested)
        assert (requested.model_version, requested.requested_by) == (1, "validator")  # type: ignore[attr-defined]

        approved = await alice.approve_version(
            "bc", reason="beats the baseline on the holdout", actor="mallory"
        )

        assert (approved.version, approved.status) == (1, "approved")
        assert approved.decided_by == "alice (claimed mallory)"  # the principal, whatever was claimed
        assert approved.reason == "beats the baseline on the holdout" and approved.decided_at is not None
        assert (await alice.get_model("bc")).aliases == {"champion": 1, "challenger": 1}
        last = (await alice.alias_history("bc"))[-1]
        assert (last.alias, last.to_version, last.actor) == ("champion", 1, "alice (claimed mallory)")
        assert "beats the baseline on the holdout" in last.reason
        # Announced exactly as a promotion (serving swaps on ModelPromoted), then the decision.
        [promoted] = approvals.events(ModelPromoted)
        assert (promoted.model_version, promoted.actor) == (1, "alice (claimed mallory)")  # type: ignore[attr-defined]
        moved = [e for e in approvals.events(ModelAliasChanged) if e.alias == "champion"]  # type: ignore[attr-defined]
        assert [e.model_version for e in moved] == [1]
        [decided] = approvals.events(ModelApprovalDecided)
        assert isinstance(decided, ModelApprovalDecided)
        assert (decided.decision, decided.decided_by, decided.champion_version) == (
            "approved",
            "alice (claimed mallory)",
            1,
        )
        with pytest.raises(FailedPrecondition, match="approved by alice"):
            await alice.approve_version("bc", 1, reason="again")
        assert approvals.core.store.pending_events() == []  # everything went out through the outbox


async def test_rejecting_keeps_the_champion_and_records_who_and_why(
    approvals: Approvals, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with approvals.connect("alice") as alice:
        await _manual_model(alice)
        await approvals.candidate(alice, onnx_bytes)
        await alice.approve_version("bc", 1, reason="first champion")
        assert await approvals.candidate(alice, onnx_bytes) == 2
        [pending] = await alice.list_approvals("bc", "pending")
        assert (pending.version, pending.champion_version) == (2, 1)
        promotions = len(approvals.events(ModelPromoted))

        rejected = await alice.reject_version("bc", 2, reason="worse on the new segment")

        assert (rejected.status, rejected.decided_by, rejected.reason) == (
            "rejected",
            "alice",
            "worse on the new segment",
        )
        assert (await alice.get_model("bc")).aliases["champion"] == 1
        assert len(approvals.events(ModelPromoted)) == promotions
        decided = approvals.events(ModelApprovalDecided)[-1]
        assert isinstance(decided, ModelApprovalDecided)
        assert (decided.model_version, decided.decision, decided.champion_version) == (2, "rejected", 1)
        with pytest.raises(FailedPrecondition, match="rejected by alice"):
            await alice.approve_version("bc", 2, reason="changed my mind")
        assert [a.status for a in await alice.list_approvals("bc")] == ["rejected", "approved"]


async def test_a_newer_passing_candidate_supersedes_the_pending_one(
    approvals: Approvals, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with approvals.connect("alice") as alice:
        await _manual_model(alice)
        await approvals.candidate(alice, onnx_bytes)
        assert await approvals.candidate(alice, onnx_bytes, passed=False) == 2  # a failure supersedes nothing
        assert await approvals.candidate(alice, onnx_bytes) == 3

        newest, older = await alice.list_approvals("bc")
        assert (newest.version, newest.status) == (3, "pending")
        assert (older.version, older.status, older.superseded_by) == (1, "superseded", 3)
        assert older.reason == "superseded by v3" and older.decided_by == "registry"
        superseded = approvals.events(ModelApprovalDecided)[-1]
        assert isinstance(superseded, ModelApprovalDecided)
        assert (superseded.model_version, superseded.decision, superseded.superseded_by) == (
            1,
            "superseded",
            3,
        )
        requested = approvals.events(ModelApprovalRequested)[-1]
        assert isinstance(requested, ModelApprovalRequested) and requested.superseded_version == 1
        with pytest.raises(FailedPrecondition, match="superseded by v3"):
            await alice.approve_version("bc", 1, reason="I liked v1")
        # Without a version, the decision is about the pending one.
        assert (await alice.approve_version("bc", reason="v3 it is")).version == 3
        assert (await alice.get_model("bc")).aliases["champion"] == 3


async def test_refusals_name_what_is_wrong_and_change_nothing(
    approvals: Approvals, trained_breast_cancer: TrainingResult
) -> None:
    async with approvals.connect("alice") as alice, approvals.connect("bob") as bob:
        await _manual_model(alice)
        await approvals.candidate(alice, trained_breast_cancer.onnx_bytes)
        before = len(approvals.published)

        with pytest.raises(PermissionDenied, match="manage"):
            await bob.approve_version("bc", 1, reason="looks fine to me")
        with pytest.raises(PermissionDenied):
            await bob.reject_version("bc", 1, reason="no")
        with pytest.raises(InvalidArgument, match="reason"):
            await alice.approve_version("bc", 1, reason="  ")
        with pytest.raises(NotFound):
            await alice.approve_version("bc", 9, reason="r")
        with pytest.raises(NotFound):
            await alice.approve_version("no-such-model", 1, reason="r")
        with pytest.raises(InvalidArgument):
            await alice.approve_version("bad name!", reason="r")

        assert len(approvals.published) == before
        [still] = await bob.list_approvals("bc")  # reading them needs only read
        assert still.status == "pending" and "champion" not in (await bob.get_model("bc")).aliases


async def test_an_automatic_model_and_a_redelivered_verdict_request_nothing_more(
    approvals: Approvals, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with approvals.connect("alice") as alice:
        await alice.register_model("auto")
        version = await alice.create_version("auto", onnx_bytes, dataset="bc", dataset_version="d1")
        await approvals.core.on_validated(
            ModelValidated(
                source="v", subject="auto", model="auto", model_version=version.version, passed=True, gates=[]
            )
        )
        assert await alice.list_approvals("auto") == []
        with pytest.raises(FailedPrecondition, match="no version of 'auto' is awaiting approval"):
            await alice.approve_version("auto", reason="r")

        await _manual_model(alice)
        await approvals.candidate(alice, onnx_bytes)
        await approvals.core.on_validated(
            ModelValidated(source="v", subject="bc", model="bc", model_version=1, passed=True, gates=[])
        )  # redelivered
        assert len(await alice.list_approvals("bc")) == 1
        assert len(approvals.events(ModelApprovalRequested)) == 1


async def test_promoting_the_pending_version_by_hand_approves_it(
    approvals: Approvals, trained_breast_cancer: TrainingResult
) -> None:
    async with approvals.connect("alice") as alice:
        await _manual_model(alice)
        await approvals.candidate(alice, trained_breast_cancer.onnx_bytes)

        await alice.set_alias("bc", "champion", 1, reason="promoted the usual way")

        [closed] = await alice.list_approvals("bc")
        assert (closed.status, closed.decided_by, closed.reason) == (
            "approved",
            "alice",
            "promoted the usual way",
        )
        decided = approvals.events(ModelApprovalDecided)[-1]
        assert isinstance(decided, ModelApprovalDecided) and decided.decision == "approved"


async def test_a_version_promoted_automatically_after_the_policy_changed_supersedes_the_pending_one(
    approvals: Approvals, trained_breast_cancer: TrainingResult
) -> None:
    async with approvals.connect("alice") as alice:
        await _manual_model(alice)
        await approvals.candidate(alice, trained_breast_cancer.onnx_bytes)
        await alice.update_model("bc", promotion_policy="automatic")

        assert await approvals.candidate(alice, trained_breast_cancer.onnx_bytes) == 2

        [closed] = await alice.list_approvals("bc")
        assert (closed.version, closed.status, closed.superseded_by) == (1, "superseded", 2)
        decided = approvals.events(ModelApprovalDecided)[-1]
        assert isinstance(decided, ModelApprovalDecided)
        assert (decided.decision, decided.champion_version) == ("superseded", 2)
