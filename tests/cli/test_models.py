"""`cascade models` against a real RegistryService over loopback: registering, tagging, describing,
choosing a policy, searching, aliases (with and without force), showing a model, and the history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from cascade.cli.errors import EXIT_NOT_FOUND
from cascade.cli.main import app
from cascade.client.calls import RemoteService
from cascade.client.ingest import IngestClient
from cascade.events import Event, GateResult, ModelValidated
from cascade.grpc_io import open_channel
from cascade.security import Authenticator, AuthInterceptor, PrincipalEntry, Principals, hash_token
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import Lineage, RegistryCore
from cascade.services.registry.grpc_api import ROLES, RegistryServicer
from cascade.services.registry.permissions import Permissions
from cascade.services.registry.store import RegistryStore, sqlite_url
from cascade.services.trainer.training import build_pipeline, export_onnx
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.grpc_server import serving

NEW_COMMANDS = [
    *("register", "search", "tag", "describe", "policy", "alias", "unalias", "promote", "show"),
    *("approvals", "approve", "reject"),
]


@dataclass
class Registry:
    address: str
    stub: registry_pb2_grpc.RegistryServiceStub
    core: RegistryCore


@pytest.fixture(scope="module")
def onnx_model() -> bytes:
    frame = load_breast_cancer(as_frame=True).frame
    pipeline = build_pipeline("logistic_regression", "classification", {}, seed=0)
    pipeline.fit(frame.drop(columns="target").to_numpy(np.float32), frame["target"])
    return export_onnx(pipeline, 30, "classification")


@asynccontextmanager
async def _registry(tmp_path: Path, auth: Authenticator | None = None) -> AsyncIterator[Registry]:
    """A registry servicer on loopback; with `auth`, callers are authenticated as services' are."""

    async def publish(event: Event) -> None:
        pass

    store = RegistryStore(sqlite_url(tmp_path / "registry.sqlite3"))
    core = RegistryCore(store, LocalArtifactStore(tmp_path / "artifacts"), publish, "automatic")
    ingest = open_channel("127.0.0.1:1")  # lineage is not asked for here
    servicer = RegistryServicer(
        core,
        Lineage(core, IngestClient(RemoteService("ingest", ingest))),
        tmp_path / "spool",
        10_000_000,
        Permissions(store, "read") if auth else None,
    )
    interceptors = [AuthInterceptor(auth, ROLES)] if auth else []

    def register(server: grpc.aio.Server) -> None:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

    async with serving(register, interceptors) as address, open_channel(address) as channel:
        yield Registry(address, registry_pb2_grpc.RegistryServiceStub(channel), core)
    await ingest.close(None)
    store.close()


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    async with _registry(tmp_path) as running:
        yield running


async def _create(registry: Registry, model: str, artifact: bytes, accuracy: float) -> None:
    header = pb.VersionHeader(
        model=model, dataset="bc", dataset_version="d1", run=pb.TrainingRun(metrics={"cv_accuracy": accuracy})
    )

    def requests() -> Iterator[pb.CreateModelVersionRequest]:
        yield pb.CreateModelVersionRequest(header=header)
        yield pb.CreateModelVersionRequest(chunk=artifact)

    await registry.stub.CreateModelVersion(requests())


async def _cascade(registry: Registry, *args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
    result = await asyncio.to_thread(
        CliRunner(env=env).invoke, app, ["models", *args, "--address", registry.address]
    )
    assert result.exit_code == code, result.output
    return result.output


@pytest.mark.parametrize("command", NEW_COMMANDS)
def test_help_renders(command: str) -> None:
    result = CliRunner().invoke(app, ["models", command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


async def test_register_tag_describe_policy_and_show_a_model(registry: Registry, onnx_model: bytes) -> None:
    out = await _cascade(
        registry, "register", "bc", "--description", "tumours", "--policy", "manual", "--tag", "team=ml"
    )
    assert "Registered model 'bc' (policy manual)" in out
    taken = await _cascade(registry, "register", "bc", code=1)
    assert "ALREADY_EXISTS" in taken
    await _create(registry, "bc", onnx_model, 0.91)
    await _create(registry, "bc", onnx_model, 0.97)

    assert "bc/1 tags: owner=alice, stage=dev" in await _cascade(
        registry, "tag", "bc/1", "stage=dev", "owner=alice"
    )
    assert "bc/1 tags: stage=dev" in await _cascade(registry, "tag", "bc/1", "--delete", "owner")
    assert "bc tags: domain=health" in await _cascade(
        registry, "tag", "bc", "domain=health", "--delete", "team"
    )
    await _cascade(registry, "describe", "bc/2", "the better one")
    await _cascade(registry, "describe", "bc", "breast cancer tumours")
    assert "bc: promotion policy automatic" in await _cascade(registry, "policy", "bc", "automatic")
    await _cascade(registry, "promote", "bc", "2", "--reason", "best so far")

    shown = (await _cascade(registry, "show", "bc")).splitlines()
    assert shown[0] == "bc"
    assert "  description: breast cancer tumours" in shown
    assert shown[shown.index("  tags:") + 1] == "    domain=health"
    assert "  policy:      automatic" in shown
    assert "  latest:      v2 (pending)" in shown
    assert "  champion:    v2" in shown
    assert "  inputs:      input FP32 [-1, 30]" in shown
    assert "Champion: v2, trained on bc@d1, cv_accuracy=0.97" in shown
    newest = shown.index("Newest versions (2 of 2):")
    assert shown[newest + 1].split() == [
        "VERSION",
        "STATUS",
        "ALIASES",
        "CREATED",
        "DATASET",
        "VERSION",
        "METRIC",
    ]
    assert [line.split()[:3] for line in shown[newest + 2 : newest + 4]] == [
        ["2", "pending", "champion"],
        ["1", "pending", "-"],
    ]
    as_json = json.loads(await _cascade(registry, "show", "bc", "--json"))
    assert as_json["model"]["tags"] == {"domain": "health"}
    assert as_json["champion"]["version"] == 2
    assert [v["version"] for v in as_json["versions"]] == [2, 1]
    version = (await _cascade(registry, "show", "bc/1")).splitlines()
    assert "bc version 1 (pending)" in version and "    stage=dev" in version
    missing = await _cascade(registry, "show", "nothing_here", code=3)
    assert "NOT_FOUND" in missing
    bad = await _cascade(registry, "tag", "bc/1", "no-equals-sign", code=2)
    assert "is not KEY=VALUE" in bad
    listed = await _cascade(registry, "list")
    assert listed.splitlines()[1].split() == ["bc", "2", "2", "-", "-", "automatic"]


async def test_search_by_tags_metrics_status_and_dataset_version(
    registry: Registry, onnx_model: bytes
) -> None:
    for model, accuracy in (("a", 0.90), ("a", 0.96), ("b", 0.99)):
        await _create(registry, model, onnx_model, accuracy)
    await _cascade(registry, "tag", "a/2", "stage=prod")

    def found(output: str) -> list[tuple[str, int]]:
        return [(v["model"], v["version"]) for v in json.loads(output)]

    assert found(await _cascade(registry, "search", "--json")) == [("b", 1), ("a", 2), ("a", 1)]
    assert found(await _cascade(registry, "search", "a", "--metric", "cv_accuracy>=0.95", "--json")) == [
        ("a", 2)
    ]
    assert found(
        await _cascade(
            registry, "search", "--metric", "cv_accuracy > 0.9", "--metric", "cv_accuracy<0.99", "--json"
        )
    ) == [("a", 2)]
    assert found(await _cascade(registry, "search", "--tag", "stage=prod", "--json")) == [("a", 2)]
    assert found(await _cascade(registry, "search", "--status", "ready", "--json")) == []
    assert found(await _cascade(registry, "search", "--dataset-version", "d1", "--limit", "1", "--json")) == [
        ("b", 1)
    ]
    table = (await _cascade(registry, "search", "a")).splitlines()
    assert table[0].split()[:4] == ["MODEL", "VERSION", "STATUS", "ALIASES"]
    assert table[1].split()[:3] == ["a", "2", "pending"] and table[1].endswith("cv_accuracy=0.96")
    assert "stage=prod" not in table[1]  # tags are behind --json
    assert "No versions match." in await _cascade(registry, "search", "a", "--tag", "stage=gone")
    bad = await _cascade(registry, "search", "--metric", "cv_accuracy~0.9", code=2)
    assert "is not NAME OP NUMBER" in bad
    assert "invalid value" in (await _cascade(registry, "search", "--status", "gone", code=2)).lower()


async def test_aliases_need_force_for_a_failed_version_and_unalias_is_in_the_history(
    registry: Registry, onnx_model: bytes
) -> None:
    await _create(registry, "m", onnx_model, 0.9)
    await _create(registry, "m", onnx_model, 0.8)
    await registry.core.on_validated(
        ModelValidated(
            source="test",
            subject="m",
            model="m",
            model_version=2,
            passed=False,
            gates=[GateResult(name="quality", passed=False, value=0.5, threshold=0.8)],
        )
    )

    assert "m@staging -> version 1" in await _cascade(
        registry, "alias", "m", "staging", "1", "--actor", "bob"
    )
    refused = await _cascade(registry, "promote", "m", "2", code=2)
    assert "FAILED_PRECONDITION" in refused and "force" in refused
    assert "m@champion -> version 2" in await _cascade(
        registry, "promote", "m", "2", "--force", "--actor", "alice"
    )
    refused = await _cascade(registry, "alias", "m", "canary", "2", code=2)
    assert "FAILED_PRECONDITION" in refused
    assert "m@canary -> version 2" in await _cascade(
        registry, "alias", "m", "canary", "2", "--force", "--actor", "alice"
    )
    assert "m@staging deleted (it pointed at version 1)" in await _cascade(
        registry, "unalias", "m", "staging", "--reason", "done", "--actor", "bob"
    )
    assert "NOT_FOUND" in await _cascade(registry, "unalias", "m", "staging", code=3)
    assert "refused the request" in await _cascade(registry, "alias", "m", "Bad!", "1", code=2)

    rows = [line.split() for line in (await _cascade(registry, "history", "m")).splitlines()[1:]]
    assert [row[1:5] for row in rows] == [
        ["staging", "-", "1", "bob"],
        ["champion", "-", "2", "alice"],
        ["canary", "-", "2", "alice"],
        ["staging", "1", "(deleted)", "bob"],
    ]
    assert "failed" in await _cascade(registry, "show", "m/2")


async def test_a_token_authenticates_the_cli_and_names_the_actor(tmp_path: Path) -> None:
    token = "alice-token-0123456789"
    alice = PrincipalEntry("alice", frozenset({"registry:register"}), hash_token(token))
    reader = PrincipalEntry("reader", frozenset({"registry:read"}), hash_token("reader-token-0123456789"))
    async with _registry(tmp_path, Authenticator(Principals([alice, reader]), required=True)) as registry:
        refused = await _cascade(registry, "register", "secured", code=5)  # exit 5: denied
        assert "does not know the caller" in refused and "CASCADE_TOKEN" in refused
        denied = await _cascade(registry, "register", "secured", "--token", "reader-token-0123456789", code=5)
        assert "reader lacks the role registry:register" in denied
        await _cascade(registry, "register", "secured", "--token", token)
        await _cascade(registry, "tag", "secured", "team=ml", env={"CASCADE_TOKEN": token})
        shown = await _cascade(registry, "show", "secured", "--json", env={"CASCADE_TOKEN": token})
        assert json.loads(shown)["model"]["tags"] == {"team": "ml"}


UNKNOWN_MODEL_VERBS = [
    ["show", "ghost"],
    ["show", "ghost/1"],
    ["search", "ghost"],
    ["history", "ghost"],
    ["lineage", "ghost/1"],
    ["tag", "ghost", "k=v"],
    ["describe", "ghost", "words"],
    ["policy", "ghost", "manual"],
    ["promote", "ghost", "1"],
    ["alias", "ghost", "canary", "1"],
    ["unalias", "ghost", "canary"],
    ["rollback", "ghost"],
]


@pytest.mark.parametrize("verb", UNKNOWN_MODEL_VERBS, ids=" ".join)
async def test_every_verb_on_an_unknown_model_exits_not_found(registry: Registry, verb: list[str]) -> None:
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["models", *verb, "--address", registry.address]
    )

    assert result.exit_code == EXIT_NOT_FOUND, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


async def test_show_says_the_latest_version_failed_and_cuts_long_tags(
    registry: Registry, onnx_model: bytes
) -> None:
    await _create(registry, "f", onnx_model, 0.7)
    await _cascade(registry, "tag", "f/1", "record=" + "x" * 5000)
    await registry.core.on_validated(
        ModelValidated(
            source="test",
            subject="f",
            model="f",
            model_version=1,
            passed=False,
            gates=[GateResult(name="quality", passed=False, value=0.5, threshold=0.8)],
        )
    )

    shown = await _cascade(registry, "show", "f")

    assert "No champion: v1 failed validation: quality failed: 0.5 vs threshold 0.8" in shown.splitlines()
    assert "      quality failed: 0.5 vs threshold 0.8" in shown.splitlines()  # under v1 in the table
    one = await _cascade(registry, "show", "f/1")
    assert "    record=" + "x" * 60 + "... (5000 chars; --json shows all)" in one.splitlines()
    assert "    quality failed: 0.5 vs threshold 0.8" in one.splitlines()
    assert max(len(line) for line in (shown + one).splitlines()) < 130
    whole = json.loads(await _cascade(registry, "show", "f/1", "--json"))
    assert whole["tags"]["record"] == "x" * 5000
