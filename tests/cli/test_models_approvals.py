"""`cascade models approvals|approve|reject` against a real RegistryService over loopback, with
authentication on: a person who manages the model decides, with a reason; others are refused."""

from __future__ import annotations

import json
from pathlib import Path

from cascade.cli.errors import EXIT_NOT_FOUND
from cascade.client.calls import RemoteService
from cascade.client.channels import ClientSecurity
from cascade.client.registry import RegistryClient
from cascade.events import ModelValidated
from cascade.grpc_io import open_channel
from cascade.security import Authenticator, PrincipalEntry, Principals, hash_token
from tests.cli import test_models
from tests.cli.test_models import Registry, _cascade, _registry

onnx_model = test_models.onnx_model  # the module's fixture: one small trained classifier

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789"
PRINCIPALS = Principals(
    [
        PrincipalEntry("alice", frozenset({"registry:register"}), hash_token(ALICE)),
        PrincipalEntry("bob", frozenset(), hash_token(BOB)),
    ]
)


async def _passing(registry: Registry, onnx_model: bytes, version: int) -> None:
    """Upload version `version` of bc (as alice) and hand the registry the validator's pass."""
    async with open_channel(registry.address, ClientSecurity(token=ALICE)) as channel:
        client = RegistryClient(RemoteService("registry", channel), timeout=10)
        assert (await client.create_version("bc", onnx_model, dataset="bc")).version == version
    verdict = ModelValidated(
        source="v", subject="bc", model="bc", model_version=version, passed=True, gates=[]
    )
    await registry.core.on_validated(verdict)


async def test_a_manager_approves_or_rejects_with_a_reason_and_the_table_says_so(
    tmp_path: Path, onnx_model: bytes
) -> None:
    async with _registry(tmp_path, Authenticator(PRINCIPALS, required=True)) as registry:
        alice = {"CASCADE_TOKEN": ALICE}
        await _cascade(registry, "register", "bc", "--policy", "manual", env=alice)
        assert "No approvals for bc." in await _cascade(registry, "approvals", "bc", env=alice)
        await _passing(registry, onnx_model, 1)

        shown = await _cascade(registry, "show", "bc", env=alice)
        assert "v1 passed validation and is challenger, awaiting approval" in " ".join(shown.split())
        listed = await _cascade(registry, "approvals", "bc", env=alice)
        assert "awaiting approval" in listed and "validator" not in listed.split("\n")[0]

        missing = await _cascade(registry, "approve", "bc", env=alice, code=2)  # --reason is required
        assert "--reason" in missing
        denied = await _cascade(registry, "approve", "bc", "--reason", "fine", "--token", BOB, code=5)
        assert "needs 'manage'" in denied and len(denied.strip().splitlines()) == 1

        approved = await _cascade(registry, "approve", "bc", "1", "--reason", "beats v0 on recall", env=alice)
        assert approved.strip() == "bc v1 approved by alice: now champion"
        history = await _cascade(registry, "history", "bc", "--json", env=alice)
        last = json.loads(history)["moves"][-1]
        assert (last["alias"], last["to_version"], last["actor"]) == ("champion", 1, "alice")
        assert "beats v0 on recall" in last["reason"]

        again = await _cascade(registry, "approve", "bc", "1", "--reason", "twice", env=alice, code=2)
        assert "not awaiting approval: approved by alice" in again

        await _passing(registry, onnx_model, 2)
        await _passing(registry, onnx_model, 3)
        rejected = await _cascade(registry, "reject", "bc", "--reason", "slower", "--json", env=alice)
        assert json.loads(rejected)["status"] == "rejected" and json.loads(rejected)["version"] == 3
        everything = json.loads(await _cascade(registry, "approvals", "bc", "--json", env=alice))["approvals"]
        assert [(a["version"], a["status"], a["decided_by"]) for a in everything] == [
            (3, "rejected", "alice"),
            (2, "superseded", "registry"),
            (1, "approved", "alice"),
        ]
        table = await _cascade(registry, "approvals", "--status", "superseded", env=alice)
        assert "superseded by v3" in table and "rejected" not in table
        assert registry.core.store.get_model("bc").aliases["champion"] == 1


async def test_deciding_on_an_unknown_model_or_version_exits_not_found(
    tmp_path: Path, onnx_model: bytes
) -> None:
    async with _registry(tmp_path) as registry:
        await _cascade(registry, "register", "bc", "--policy", "manual")
        await _passing(registry, onnx_model, 1)
        for verb in (
            ["approve", "bc", "7", "--reason", "r"],
            ["reject", "ghost", "--reason", "r"],
            ["approvals", "ghost"],
        ):
            refused = await _cascade(registry, *verb, code=EXIT_NOT_FOUND)
            assert len(refused.strip().splitlines()) == 1 and "Traceback" not in refused
