import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import onnx
import pytest

from cascade.client.calls import RemoteService
from cascade.client.ingest import IngestClient
from cascade.client.registry import RegistryClient
from cascade.errors import FailedPrecondition
from cascade.events import (
    Event,
    GateResult,
    ModelAliasChanged,
    ModelPromoted,
    ModelTrafficChanged,
    ModelValidated,
    ModelVersionCreated,
    ModelVersionStatusChanged,
)
from cascade.grpc_io import open_channel
from cascade.services.ingest.core import IngestCore
from cascade.services.ingest.grpc_api import IngestServicer
from cascade.services.ingest.store import IngestStore
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import Lineage, RegistryCore
from cascade.services.registry.grpc_api import RegistryServicer
from cascade.services.registry.store import RegistryStore
from cascade.services.trainer.training import TrainingResult
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.grpc_server import serving


@dataclass
class Registry:
    stub: registry_pb2_grpc.RegistryServiceStub
    channel: grpc.aio.Channel
    core: RegistryCore
    published: list[Event]
    ingest_channel: grpc.aio.Channel


@pytest.fixture
async def registry(tmp_path: Path, database_url: str) -> AsyncIterator[Registry]:
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    core = RegistryCore(
        RegistryStore(database_url),
        LocalArtifactStore(tmp_path / "a"),
        publish,
        "automatic",
    )
    ingest = IngestServicer(
        IngestCore(IngestStore(tmp_path / "ingest"), _ignore), max_upload_bytes=10_000_000
    )

    def register_ingest(server: grpc.aio.Server) -> None:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)

    async with serving(register_ingest) as ingest_address, open_channel(ingest_address) as ingest_channel:
        lineage = Lineage(core, IngestClient(RemoteService("ingest", ingest_channel)))
        servicer = RegistryServicer(core, lineage, tmp_path / "spool", max_artifact_bytes=5_000_000)

        def register(server: grpc.aio.Server) -> None:
            registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

        async with serving(register) as address, open_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            yield Registry(stub, channel, core, published, ingest_channel)
    core.store.close()


async def _ignore(event: Event) -> None:
    pass


def _create(
    model: str, artifact: bytes, key: str = "", chunk: int = 300
) -> list[pb.CreateModelVersionRequest]:
    header = pb.VersionHeader(
        model=model,
        dataset="bc",
        dataset_version="d1",
        idempotency_key=key,
        run=pb.TrainingRun(run_id="r1", metrics={"cv_accuracy": 0.97}, seed=42),
        tags={"features": json.dumps(["a"])},
    )
    return [pb.CreateModelVersionRequest(header=header)] + [
        pb.CreateModelVersionRequest(chunk=artifact[i : i + chunk]) for i in range(0, len(artifact), chunk)
    ]


def _client(registry: Registry) -> RegistryClient:
    return RegistryClient(RemoteService("registry", registry.channel))


async def test_versions_are_numbered_and_keep_signature_and_lineage(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    first = await registry.stub.CreateModelVersion(iter(_create("bc", onnx_bytes, key="k1")))
    second = await registry.stub.CreateModelVersion(iter(_create("bc", onnx_bytes, key="k2")))
    assert (first.version, second.version) == (1, 2)
    assert first.artifact_sha256 == hashlib.sha256(onnx_bytes).hexdigest()
    assert [(t.name, t.datatype, list(t.shape)) for t in first.inputs] == [("input", "FP32", [-1, 30])]
    assert [t.name for t in first.outputs] == ["label", "probabilities"]
    assert (first.dataset_version, first.run.run_id, first.run.metrics["cv_accuracy"]) == ("d1", "r1", 0.97)
    assert await _client(registry).download_artifact("bc", 2) == onnx_bytes


async def test_a_repeated_idempotency_key_returns_the_first_version(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    first = await registry.stub.CreateModelVersion(
        iter(_create("bc", trained_breast_cancer.onnx_bytes, key="k"))
    )
    again = await registry.stub.CreateModelVersion(
        iter(_create("bc", trained_breast_cancer.onnx_bytes, key="k"))
    )
    assert again.version == first.version == 1
    found = await registry.stub.GetModelVersion(pb.GetModelVersionRequest(model="bc", idempotency_key="k"))
    assert found.version == 1


async def test_a_passed_validation_promotes_exactly_once(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    await registry.stub.CreateModelVersion(iter(_create("bc", trained_breast_cancer.onnx_bytes)))
    verdict = ModelValidated(
        source="cascade/validator",
        subject="bc",
        model="bc",
        model_version=1,
        passed=True,
        gates=[GateResult(name="min_accuracy", passed=True, value=0.97, threshold=0.7)],
    )
    await registry.core.on_validated(verdict)
    await registry.core.on_validated(verdict)  # redelivered
    assert [
        (e.model_version, e.previous_version) for e in registry.published if isinstance(e, ModelPromoted)
    ] == [(1, None)]
    champion = await registry.stub.GetModelVersion(pb.GetModelVersionRequest(model="bc", alias="champion"))
    assert champion.version == 1 and "champion" in champion.aliases
    assert json.loads(champion.validation.report_json)["gates"][0]["name"] == "min_accuracy"
    history = registry.core.store.history("bc")
    assert [(h["alias"], h["to_version"], h["actor"]) for h in history] == [("champion", 1, "validator")]


async def test_a_failed_validation_moves_no_alias(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    await registry.stub.CreateModelVersion(iter(_create("bc", trained_breast_cancer.onnx_bytes)))
    await registry.core.on_validated(
        ModelValidated(source="v", subject="bc", model="bc", model_version=1, passed=False, gates=[])
    )
    assert [type(e).__name__ for e in registry.published] == [
        "ModelVersionCreated",
        "ModelVersionStatusChanged",
    ]
    changed = registry.published[1]
    assert isinstance(changed, ModelVersionStatusChanged)
    assert (changed.previous_status, changed.status) == ("pending", "failed")
    models = await registry.stub.ListModels(pb.ListModelsRequest())
    assert [(m.name, m.latest_version, dict(m.aliases)) for m in models.models] == [("bc", 1, {})]
    failed = await registry.stub.GetModelVersion(pb.GetModelVersionRequest(model="bc", version=1))
    assert failed.status == pb.VERSION_STATUS_FAILED
    # A failed version gets an alias only when asked with force.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.stub.SetAlias(pb.SetAliasRequest(model="bc", alias="champion", version=1))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "failed validation" in (raised.value.details() or "")
    forced = await registry.stub.SetAlias(
        pb.SetAliasRequest(model="bc", alias="champion", version=1, force=True, actor="alice")
    )
    assert forced.aliases == ["champion"]


async def test_a_corrupt_artifact_is_refused_not_served(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    created = await registry.stub.CreateModelVersion(iter(_create("bc", trained_breast_cancer.onnx_bytes)))
    path = registry.core.artifacts.path(created.artifact_sha256)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(FailedPrecondition, match="corrupt") as raised:
        await _client(registry).download_artifact("bc", 1)
    assert raised.value.status == grpc.StatusCode.FAILED_PRECONDITION  # the registry's own verdict


async def test_no_alias_moves_to_an_artifact_that_fails_verification_even_with_force(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    model = onnx.load_from_string(trained_breast_cancer.onnx_bytes)
    model.doc_string = "a second artifact, with its own digest"
    for key, artifact in (("k1", trained_breast_cancer.onnx_bytes), ("k2", model.SerializeToString())):
        await registry.stub.CreateModelVersion(iter(_create("bc", artifact, key=key)))
    await registry.core.on_validated(_passed(1))
    first, second = (
        registry.core.artifacts.path(registry.core.store.get("bc", v).artifact_sha256) for v in (1, 2)
    )
    intact = second.read_bytes()

    async def champion() -> int:
        found = await registry.stub.GetModelVersion(pb.GetModelVersionRequest(model="bc", alias="champion"))
        return found.version

    async def refused(request: pb.SetAliasRequest | pb.RollbackRequest) -> str:
        """The reason a move is refused with, after checking the champion stayed where it was."""
        before = await champion()
        call = registry.stub.SetAlias if isinstance(request, pb.SetAliasRequest) else registry.stub.Rollback
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(request)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert await champion() == before
        return raised.value.details() or ""

    to_second = pb.SetAliasRequest(model="bc", alias="champion", version=2, force=True, actor="alice")
    second.write_bytes(intact[:-10] + b"0123456789")
    assert "corrupt" in await refused(to_second)
    second.unlink()
    assert "missing" in await refused(to_second)
    second.write_bytes(intact)  # restored: the move goes through; a rollback to a corrupted v1 does not
    assert (await registry.stub.SetAlias(to_second)).version == 2
    first.write_bytes(first.read_bytes()[:-1] + b"!")
    assert "corrupt" in await refused(pb.RollbackRequest(model="bc", actor="alice"))
    assert await champion() == 2
    history = await registry.stub.GetAliasHistory(pb.GetAliasHistoryRequest(model="bc"))
    assert [(m.from_version, m.to_version) for m in history.moves] == [(0, 1), (1, 2)]


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (pb.GetModelVersionRequest(model="nope", version=1), grpc.StatusCode.NOT_FOUND),
        (pb.GetModelVersionRequest(model="../x", version=1), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GetModelVersionRequest(model="bc", alias="Bad Alias"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GetModelVersionRequest(model="bc"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_lookups_get_clear_errors(
    registry: Registry, request_: pb.GetModelVersionRequest, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.stub.GetModelVersion(request_)
    assert raised.value.code() == code
    assert raised.value.details()


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        (_create("bc", b""), "empty"),
        (_create("bc", b"x" * 5_000_001, chunk=1_000_000), "exceeds the limit"),
        (_create("bc", b"not an onnx model"), "not a valid ONNX model"),
        (_create("../x", b"whatever"), "invalid model name"),
    ],
)
async def test_bad_uploads_are_invalid_arguments(
    registry: Registry, requests: list[pb.CreateModelVersionRequest], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.stub.CreateModelVersion(iter(requests))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (raised.value.details() or "")


async def test_an_upload_stream_of_bytes_that_are_not_protobuf_is_an_invalid_argument(
    registry: Registry,
) -> None:
    upload = registry.channel.stream_unary("/cascade.registry.v1.RegistryService/CreateModelVersion")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await upload(iter([b"\xff\xff\xff"]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in (raised.value.details() or "")


def _passed(version: int) -> ModelValidated:
    return ModelValidated(source="v", subject="bc", model="bc", model_version=version, passed=True, gates=[])


async def test_rollback_returns_the_previous_champion_and_history_records_every_move(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    for key in ("k1", "k2"):
        await registry.stub.CreateModelVersion(iter(_create("bc", trained_breast_cancer.onnx_bytes, key=key)))
    await registry.core.on_validated(_passed(1))
    await registry.core.on_validated(_passed(2))
    rolled = await registry.stub.Rollback(pb.RollbackRequest(model="bc", actor="alice", reason="bad canary"))
    assert rolled.version == 1 and "champion" in rolled.aliases
    history = await registry.stub.GetAliasHistory(pb.GetAliasHistoryRequest(model="bc"))
    assert [(m.alias, m.from_version, m.to_version, m.actor) for m in history.moves] == [
        ("champion", 0, 1, "validator"),
        ("champion", 1, 2, "validator"),
        ("champion", 2, 1, "alice"),
    ]
    assert history.moves[2].reason == "rollback from v2: bad canary"
    assert all(m.at.seconds > 0 for m in history.moves)
    promoted = [e.model_version for e in registry.published if isinstance(e, ModelPromoted)]
    assert promoted == [1, 2, 1]


async def test_rollback_without_a_previous_champion_is_refused(registry: Registry) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.stub.Rollback(pb.RollbackRequest(model="bc"))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_lineage_walks_back_to_the_raw_batches_and_forward_from_a_dataset_version(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    ingest = ingest_pb2_grpc.IngestServiceStub(registry.ingest_channel)
    uploads = []
    for part in (frame.iloc[:300], frame.iloc[300:]):
        data = part.to_csv(index=False).encode()
        uploads.append(
            await ingest.UploadBatch(
                iter(
                    [
                        ingest_pb2.UploadBatchRequest(header=ingest_pb2.BatchHeader(dataset="bc")),
                        ingest_pb2.UploadBatchRequest(chunk=data),
                    ]
                )
            )
        )
    header = _create("bc", trained_breast_cancer.onnx_bytes)
    header[0].header.dataset_version = uploads[1].dataset_version
    await registry.stub.CreateModelVersion(iter(header))

    lineage = await registry.stub.GetLineage(pb.GetLineageRequest(model="bc", version=1))
    assert lineage.dataset_version == uploads[1].dataset_version
    assert lineage.parent_dataset_version == uploads[0].dataset_version
    assert list(lineage.batch_ids) == [uploads[0].batch_id, uploads[1].batch_id]
    assert lineage.version.run.run_id == "r1"

    trained_on = await registry.stub.ListModelVersions(
        pb.ListModelVersionsRequest(model="bc", dataset_version=uploads[1].dataset_version)
    )
    assert [v.version for v in trained_on.versions] == [1]
    none = await registry.stub.ListModelVersions(
        pb.ListModelVersionsRequest(model="bc", dataset_version=uploads[0].dataset_version)
    )
    assert list(none.versions) == []


async def test_every_change_is_announced_once_in_order(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    created = await registry.stub.CreateModelVersion(iter(_create("bc", trained_breast_cancer.onnx_bytes)))
    await registry.core.on_validated(_passed(1))
    await registry.stub.SetAlias(pb.SetAliasRequest(model="bc", alias="canary", version=1, actor="bob"))
    await registry.stub.DeleteAlias(pb.DeleteAliasRequest(model="bc", alias="canary", actor="bob"))
    kinds = [type(e) for e in registry.published]
    assert kinds == [
        ModelVersionCreated,
        ModelVersionStatusChanged,
        ModelAliasChanged,
        ModelPromoted,
        ModelAliasChanged,
        ModelTrafficChanged,  # `canary` is part of the model's traffic: serving re-reads it
        ModelAliasChanged,
        ModelTrafficChanged,
    ]
    revisions = [e.revision for e in registry.published if isinstance(e, ModelTrafficChanged)]
    assert revisions == [1, 2]
    first = registry.published[0]
    assert isinstance(first, ModelVersionCreated)
    assert (first.model_version, first.artifact_sha256, first.training_run) == (
        1,
        created.artifact_sha256,
        "r1",
    )
    moves = [
        (e.alias, e.action, e.previous_version, e.model_version, e.actor)
        for e in registry.published
        if isinstance(e, ModelAliasChanged)
    ]
    assert moves == [
        ("champion", "set", None, 1, "validator"),
        ("canary", "set", None, 1, "bob"),
        ("canary", "deleted", 1, None, "bob"),
    ]
    assert registry.core.store.pending_events() == []


async def test_a_manual_model_gets_a_challenger_and_a_person_promotes_it(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    await registry.stub.RegisterModel(
        pb.RegisterModelRequest(name="bc", promotion_policy=pb.PROMOTION_POLICY_MANUAL, description="d")
    )
    await registry.stub.CreateModelVersion(iter(_create("bc", trained_breast_cancer.onnx_bytes)))
    await registry.core.on_validated(_passed(1))
    candidate = await registry.stub.GetModelVersion(pb.GetModelVersionRequest(model="bc", version=1))
    assert candidate.aliases == ["challenger"] and candidate.status == pb.VERSION_STATUS_READY
    assert not [e for e in registry.published if isinstance(e, ModelPromoted)]
    await registry.stub.SetAlias(pb.SetAliasRequest(model="bc", alias="champion", version=1, actor="carol"))
    promoted = [e for e in registry.published if isinstance(e, ModelPromoted)]
    assert [(e.model_version, e.actor) for e in promoted] == [(1, "carol")]
    # Another model keeps the registry's default (automatic).
    await registry.stub.CreateModelVersion(iter(_create("other", trained_breast_cancer.onnx_bytes)))
    await registry.core.on_validated(
        ModelValidated(source="v", subject="other", model="other", model_version=1, passed=True, gates=[])
    )
    other = await registry.stub.GetModel(pb.GetModelRequest(name="other"))
    assert dict(other.aliases) == {"champion": 1}
    assert other.promotion_policy == pb.PROMOTION_POLICY_UNSPECIFIED
    assert other.effective_promotion_policy == pb.PROMOTION_POLICY_AUTOMATIC
    switched = await registry.stub.UpdateModel(
        pb.UpdateModelRequest(name="other", promotion_policy=pb.PROMOTION_POLICY_MANUAL)
    )
    assert switched.effective_promotion_policy == pb.PROMOTION_POLICY_MANUAL


async def test_models_carry_description_tags_and_the_champions_signature(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    registered = await registry.stub.RegisterModel(
        pb.RegisterModelRequest(name="bc", description="tumours", tags={"team": "oncology"})
    )
    assert (registered.latest_version, list(registered.inputs)) == (0, [])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.stub.RegisterModel(pb.RegisterModelRequest(name="bc"))
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already registered" in (raised.value.details() or "")
    await registry.stub.CreateModelVersion(iter(_create("bc", trained_breast_cancer.onnx_bytes)))
    updated = await registry.stub.UpdateModel(
        pb.UpdateModelRequest(
            name="bc", description="breast tumours", set_tags={"tier": "1"}, delete_tags=["team"]
        )
    )
    assert (updated.description, dict(updated.tags), updated.latest_version) == (
        "breast tumours",
        {"tier": "1"},
        1,
    )
    assert [(t.name, t.datatype) for t in updated.inputs] == [("input", "FP32")]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.stub.GetModel(pb.GetModelRequest(name="nope"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_search_filters_by_tags_metrics_status_and_dataset_version(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    onnx_bytes = trained_breast_cancer.onnx_bytes
    for model, key, accuracy, team in (("a", "1", 0.91, "x"), ("a", "2", 0.97, "y"), ("b", "1", 0.95, "x")):
        requests = _create(model, onnx_bytes, key=key)
        requests[0].header.run.metrics["cv_accuracy"] = accuracy
        requests[0].header.tags["team"] = team
        await registry.stub.CreateModelVersion(iter(requests))
    await registry.core.on_validated(
        ModelValidated(
            source="v", subject="a", model="a", model_version=2, passed=True, gates=[], metrics={"f1": 0.9}
        )
    )

    async def search(**fields: object) -> list[tuple[str, int]]:
        found = await registry.stub.SearchModelVersions(pb.SearchModelVersionsRequest(**fields))  # type: ignore[arg-type]
        return sorted((v.model, v.version) for v in found.versions)

    assert await search() == [("a", 1), ("a", 2), ("b", 1)]
    assert await search(model="a") == [("a", 1), ("a", 2)]
    assert await search(tags={"team": "x"}) == [("a", 1), ("b", 1)]
    above = pb.MetricFilter(name="cv_accuracy", op=pb.COMPARISON_GE, value=0.95)
    assert await search(metrics=[above]) == [("a", 2), ("b", 1)]
    assert await search(metrics=[above], tags={"team": "x"}) == [("b", 1)]
    assert await search(status=pb.VERSION_STATUS_READY) == [("a", 2)]
    validated = pb.MetricFilter(name="validation.f1", op=pb.COMPARISON_GT, value=0.5)
    assert await search(metrics=[validated]) == [("a", 2)]
    assert await search(dataset_version="d1", max_results=1) in ([("a", 1)], [("a", 2)], [("b", 1)])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await search(metrics=[pb.MetricFilter(name="cv_accuracy", value=1)])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_version_tags_and_descriptions_are_editable(
    registry: Registry, trained_breast_cancer: TrainingResult
) -> None:
    await registry.stub.CreateModelVersion(iter(_create("bc", trained_breast_cancer.onnx_bytes)))
    updated = await registry.stub.UpdateModelVersion(
        pb.UpdateModelVersionRequest(
            model="bc", version=1, description="the first", set_tags={"qa": "ok"}, delete_tags=["features"]
        )
    )
    assert (updated.description, dict(updated.tags)) == ("the first", {"qa": "ok"})
    untouched = await registry.stub.UpdateModelVersion(pb.UpdateModelVersionRequest(model="bc", version=1))
    assert untouched.description == "the first"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.stub.UpdateModelVersion(pb.UpdateModelVersionRequest(model="bc", version=9))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_deleting_a_missing_alias_is_not_found(registry: Registry) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.stub.DeleteAlias(pb.DeleteAliasRequest(model="bc", alias="champion"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
