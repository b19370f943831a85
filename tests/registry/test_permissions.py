"""Per-model permissions through a real server and real clients carrying bearer tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import grpc
import pytest

from cascade.client.channels import ClientSecurity
from cascade.client.ingest import IngestClient
from cascade.errors import Unauthenticated
from cascade.events import Event
from cascade.grpc_io import open_channel
from cascade.security import (
    Authenticator,
    AuthInterceptor,
    PrincipalEntry,
    Principals,
    hash_token,
)
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import Lineage, RegistryCore
from cascade.services.registry.grpc_api import ROLES, RegistryServicer
from cascade.services.registry.permissions import Permissions
from cascade.services.registry.store import RegistryStore
from cascade.services.serving.registry_client import RegistryModelSource
from cascade.services.trainer.training import TrainingResult
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.grpc_server import serving

# alice and bob may register models; root is an admin; reader holds only the global read role.
ROLES_OF = {
    "alice": {"registry:register"},
    "bob": {"registry:register"},
    "root": {"admin"},
    "reader": {"registry:read"},
}
PRINCIPALS = Principals(
    PrincipalEntry(name, frozenset(roles), hash_token(f"{name}-token-0123456789"))
    for name, roles in ROLES_OF.items()
)
Client = Callable[[str], AbstractAsyncContextManager[registry_pb2_grpc.RegistryServiceStub]]


@pytest.fixture
async def client(tmp_path: Path, database_url: str) -> AsyncIterator[Client]:
    async def publish(event: Event) -> None:
        pass

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

        class Connect:
            registry_address = address

            def __init__(self, token: str) -> None:
                self.channel = open_channel(address, ClientSecurity(token=token))

            async def __aenter__(self) -> registry_pb2_grpc.RegistryServiceStub:
                return registry_pb2_grpc.RegistryServiceStub(self.channel)

            async def __aexit__(self, *exc: object) -> None:
                await self.channel.close()

        yield Connect
    store.close()


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.details()
    return raised.value.code()


def _version(model: str, artifact: bytes) -> list[pb.CreateModelVersionRequest]:
    return [
        pb.CreateModelVersionRequest(header=pb.VersionHeader(model=model, dataset="d", dataset_version="v")),
        pb.CreateModelVersionRequest(chunk=artifact),
    ]


async def test_callers_without_a_valid_token_are_unauthenticated(client: Client) -> None:
    async with client("") as anonymous, client("wrong-token-0123456789") as stranger:
        assert await _code(anonymous.ListModels(pb.ListModelsRequest())) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code(stranger.GetModel(pb.GetModelRequest(name="x"))) == grpc.StatusCode.UNAUTHENTICATED


async def test_owners_manage_others_read_until_granted_and_the_audit_names_the_real_caller(
    client: Client, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with client("alice-token-0123456789") as alice, client("bob-token-0123456789") as bob:
        await alice.CreateModelVersion(iter(_version("fraud", onnx_bytes)))  # alice registers it
        model = await bob.GetModel(pb.GetModelRequest(name="fraud"))  # default: read
        assert dict(model.permissions) == {"alice": pb.PERMISSION_LEVEL_MANAGE}

        promote = pb.SetAliasRequest(model="fraud", alias="champion", version=1, actor="alice")
        assert await _code(bob.SetAlias(promote)) == grpc.StatusCode.PERMISSION_DENIED
        assert await _code(bob.CreateModelVersion(iter(_version("fraud", onnx_bytes)))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        grant = pb.SetModelPermissionRequest(model="fraud", principal="bob", level=pb.PERMISSION_LEVEL_MANAGE)
        assert await _code(bob.SetModelPermission(grant)) == grpc.StatusCode.PERMISSION_DENIED

        await alice.SetModelPermission(grant)
        await bob.SetAlias(promote)  # claims to be alice: the trail names bob, and the claim beside
        history = await alice.GetAliasHistory(pb.GetAliasHistoryRequest(model="fraud"))
        assert [(m.alias, m.to_version, m.actor) for m in history.moves] == [
            ("champion", 1, "bob (claimed alice)")
        ]

        revoke = pb.SetModelPermissionRequest(model="fraud", principal="bob", level=pb.PERMISSION_LEVEL_NONE)
        await alice.SetModelPermission(revoke)
        assert (
            await _code(bob.GetModel(pb.GetModelRequest(name="fraud"))) == grpc.StatusCode.PERMISSION_DENIED
        )
        listed = await bob.ListModels(pb.ListModelsRequest())
        assert [m.name for m in listed.models] == []  # what bob may not read, bob does not see
        found = await bob.SearchModelVersions(pb.SearchModelVersionsRequest())
        assert list(found.versions) == []


async def test_admins_may_do_anything(client: Client, trained_breast_cancer: TrainingResult) -> None:
    async with client("alice-token-0123456789") as alice, client("root-token-0123456789") as root:
        await alice.RegisterModel(pb.RegisterModelRequest(name="churn"))
        await alice.CreateModelVersion(iter(_version("churn", trained_breast_cancer.onnx_bytes)))
        moved = await root.SetAlias(pb.SetAliasRequest(model="churn", alias="canary", version=1))
        assert list(moved.aliases) == ["canary"]
        policy = pb.UpdateModelRequest(name="churn", promotion_policy=pb.PROMOTION_POLICY_MANUAL)
        assert (await root.UpdateModel(policy)).effective_promotion_policy == pb.PROMOTION_POLICY_MANUAL


async def test_serving_reads_the_registry_with_its_token(
    client: Client, trained_breast_cancer: TrainingResult
) -> None:
    address = client.registry_address  # type: ignore[attr-defined]
    async with client("root-token-0123456789") as root:
        await root.CreateModelVersion(iter(_version("shared-model", trained_breast_cancer.onnx_bytes)))
        await root.SetAlias(pb.SetAliasRequest(model="shared-model", alias="champion", version=1))
    with_token = RegistryModelSource(address, 5, ClientSecurity(token="bob-token-0123456789"))
    without = RegistryModelSource(address, 5)
    try:
        assert await with_token.models_with_champion() == ["shared-model"]
        ref = await with_token.champion("shared-model")
        assert await with_token.artifact(ref) == trained_breast_cancer.onnx_bytes
        with pytest.raises(Unauthenticated, match="registry at"):
            await without.models_with_champion()
    finally:
        await with_token.close()
        await without.close()


async def test_global_roles_reach_every_model_and_registering_needs_its_role(
    client: Client, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    async with client("alice-token-0123456789") as alice, client("reader-token-0123456789") as reader:
        await alice.CreateModelVersion(iter(_version("private", onnx_bytes)))
        revoke = pb.SetModelPermissionRequest(
            model="private", principal="reader", level=pb.PERMISSION_LEVEL_NONE
        )
        await alice.SetModelPermission(revoke)
        # registry:read is a floor on every model, above a per-model grant of none
        assert (await reader.GetModel(pb.GetModelRequest(name="private"))).name == "private"
        assert await _code(reader.RegisterModel(pb.RegisterModelRequest(name="mine"))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await _code(reader.CreateModelVersion(iter(_version("mine", onnx_bytes)))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        promote = pb.SetAliasRequest(model="private", alias="champion", version=1)
        assert await _code(reader.SetAlias(promote)) == grpc.StatusCode.PERMISSION_DENIED
        listed = await reader.ListModels(pb.ListModelsRequest())
        assert [m.name for m in listed.models] == ["private"]
