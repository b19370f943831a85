"""The registry as a real process on the real broker: streamed multi-megabyte artifacts verified
and resumable, corruption refused, aliases, tags, search and rollback, lineage both ways through
real ingest uploads, a consistent audit trail under racing clients, durability under SIGKILL, one
*model promoted* per verdict however often it is delivered, and clear errors for bad input.

Models are named per test (uuid), so the tests share the session's stack without seeing each
other. The datasets uploaded here have a single class: the trainer refuses them at once instead of
training, which keeps the shared stack free for other tests."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pandas as pd
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sklearn.datasets import load_breast_cancer, make_classification

from cascade.events import (
    Event,
    GateResult,
    ModelAliasChanged,
    ModelPromoted,
    ModelValidated,
    ModelVersionCreated,
    ModelVersionStatusChanged,
    cloudevent_headers,
)
from cascade.services.trainer.training import build_pipeline, export_onnx
from cascade.stack import Stack
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.integration.support import upload, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
# tests/integration/conftest.py gives the stack's registry this limit (its default is 1 GiB).
MAX_ARTIFACT_BYTES = 64 * MiB
REGISTRY_GROUP = "it.registry"  # the registry's consumer group under the stack's topic prefix

Stub = registry_pb2_grpc.RegistryServiceStub


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture
def registry(stack: Stack) -> Iterator[Stub]:
    with grpc.insecure_channel(stack.address("registry")) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def large_onnx() -> bytes:
    """A real random forest exported the trainer's way, several megabytes of ONNX."""
    x, y = make_classification(n_samples=4000, n_features=20, n_informative=10, random_state=0)
    pipeline = build_pipeline("random_forest", "classification", {"n_estimators": 150}, seed=0)
    pipeline.fit(x.astype(np.float32), y)
    artifact = export_onnx(pipeline, 20, "classification")
    assert len(artifact) >= 3 * MiB, len(artifact)
    return artifact


@pytest.fixture(scope="module")
def small_onnx() -> bytes:
    frame = load_breast_cancer(as_frame=True).frame
    pipeline = build_pipeline("logistic_regression", "classification", {}, seed=0)
    pipeline.fit(frame.drop(columns="target").to_numpy(np.float32), frame["target"])
    return export_onnx(pipeline, 30, "classification")


# ---------------------------------------------------------------------------------- helpers


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _unique(artifact: bytes) -> bytes:
    """The same model with a unique doc string: its own sha256, so its own file in the store."""
    model = onnx.load_from_string(artifact)
    model.doc_string = uuid.uuid4().hex
    unique: bytes = model.SerializeToString()
    return unique


def _requests(
    header: pb.VersionHeader, artifact: bytes, chunk: int
) -> Iterator[pb.CreateModelVersionRequest]:
    yield pb.CreateModelVersionRequest(header=header)
    for start in range(0, len(artifact), chunk):
        yield pb.CreateModelVersionRequest(chunk=artifact[start : start + chunk])


def _create(
    stub: Stub,
    model: str,
    artifact: bytes,
    *,
    dataset: str = "ds",
    dataset_version: str = "dv1",
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    description: str = "",
    key: str = "",
    chunk: int = MiB,
) -> pb.ModelVersion:
    header = pb.VersionHeader(
        model=model,
        dataset=dataset,
        dataset_version=dataset_version,
        run=pb.TrainingRun(run_id=f"run-{uuid.uuid4().hex[:8]}", metrics=metrics or {}, seed=7),
        idempotency_key=key,
        tags=tags or {},
        description=description,
    )
    created: pb.ModelVersion = stub.CreateModelVersion(_requests(header, artifact, chunk), timeout=60)
    return created


def _download(stub: Stub, model: str, version: int, offset: int = 0) -> tuple[bytes, list[pb.ArtifactChunk]]:
    chunks = list(
        stub.DownloadArtifact(
            pb.DownloadArtifactRequest(model=model, version=version, offset=offset), timeout=60
        )
    )
    return b"".join(c.data for c in chunks), chunks


def _error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The error a call fails with (a server-streaming call is drained, so its error shows)."""
    with pytest.raises(grpc.RpcError) as caught:
        result = call(*args, timeout=30, **kwargs)
        if isinstance(result, Iterator):  # a server stream fails as it is read
            list(result)
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error


def _history(stub: Stub, model: str) -> list[pb.AliasMove]:
    return list(stub.GetAliasHistory(pb.GetAliasHistoryRequest(model=model), timeout=10).moves)


def _version(stub: Stub, model: str, version: int = 0, alias: str = "") -> pb.ModelVersion:
    request = (
        pb.GetModelVersionRequest(model=model, alias=alias)
        if alias
        else pb.GetModelVersionRequest(model=model, version=version)
    )
    found: pb.ModelVersion = stub.GetModelVersion(request, timeout=10)
    return found


def _verdict(model: str, version: int, passed: bool, accuracy: float) -> ModelValidated:
    return ModelValidated(
        source="cascade/validator",
        subject=model,
        model=model,
        model_version=version,
        passed=passed,
        gates=[GateResult(name="quality", passed=passed, value=accuracy, threshold=0.8)],
        metrics={"accuracy": accuracy},
    )


def _deliver(stack: Stack, event: Event, times: int = 1) -> None:
    """Put an event on its topic as its producer would (same bytes each time: a redelivery), then
    wait until the registry's consumer group has committed past the last copy: handled."""
    topic = f"it.{type(event).TOPIC}"
    body = event.model_dump_json().encode()
    headers = [(k, v.encode()) for k, v in cloudevent_headers(event).items()]

    async def send() -> tuple[TopicPartition, int]:
        producer = AIOKafkaProducer(bootstrap_servers=stack.address("kafka"))
        await producer.start()
        try:
            for _ in range(times):
                sent = await producer.send_and_wait(topic, body, key=event.subject.encode(), headers=headers)
        finally:
            await producer.stop()
        return TopicPartition(topic, sent.partition), sent.offset

    async def committed(partition: TopicPartition) -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.address("kafka"))
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(REGISTRY_GROUP, partitions=[partition])
        finally:
            await admin.close()
        found = offsets.get(partition)
        return found.offset if found is not None else -1

    partition, offset = asyncio.run(send())
    wait_for(lambda: asyncio.run(committed(partition)) > offset, 60, f"the registry to handle {event.type}")


def _read_topic(stack: Stack, event_type: type[Event], model: str) -> list[Any]:
    """Every event about `model` on the event type's topic, from the beginning to its current end.
    The registry keys each event by its model; other tests put other records (malformed ones too)
    on the shared topics."""
    topic = f"it.{event_type.TOPIC}"

    async def read() -> list[Any]:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.address("kafka"))
        await admin.start()
        try:
            described = await admin.describe_topics([topic])
        finally:
            await admin.close()
        partitions = [
            TopicPartition(topic, p["partition"])
            for t in described
            if t["topic"] == topic and t["error_code"] == 0
            for p in t["partitions"]
        ]
        if not partitions:
            return []
        consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.address("kafka"), group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = await consumer.end_offsets(partitions)
            events: list[Any] = []
            async with asyncio.timeout(30):
                while [p for p in partitions if await consumer.position(p) < end[p]]:
                    batch = await consumer.getmany(*partitions, timeout_ms=500)
                    for records in batch.values():
                        events.extend(
                            event_type.model_validate_json(r.value)
                            for r in records
                            if r.key == model.encode()
                        )
            return events
        finally:
            await consumer.stop()

    return asyncio.run(read())


def _of(events: list[Any], model: str) -> list[Any]:
    return [e for e in events if e.model == model]


# ---------------------------------------------------------------------------------- artifacts


def test_a_multi_megabyte_artifact_streams_up_and_down_verified_and_resumes_from_an_offset(
    registry: Stub, large_onnx: bytes
) -> None:
    model = _name("reg_large")
    digest = hashlib.sha256(large_onnx).hexdigest()

    created = _create(registry, model, large_onnx, chunk=256 * 1024)

    assert (created.version, created.artifact_sha256, created.artifact_size) == (1, digest, len(large_onnx))
    assert [(t.name, t.datatype, list(t.shape)) for t in created.inputs] == [("input", "FP32", [-1, 20])]
    data, chunks = _download(registry, model, 1)
    assert len(chunks) > 1, "a multi-megabyte artifact comes as several chunks"
    assert hashlib.sha256(data).hexdigest() == digest == chunks[0].sha256
    assert {c.total_size for c in chunks} == {len(large_onnx)}
    assert [c.offset for c in chunks] == [0, *itertools.accumulate(len(c.data) for c in chunks[:-1])]

    # A download cut off part-way resumes from the bytes it already has.
    offset = len(large_onnx) // 3 + 17
    rest, resumed = _download(registry, model, 1, offset=offset)
    assert resumed[0].offset == offset
    assert hashlib.sha256(large_onnx[:offset] + rest).hexdigest() == digest
    assert _download(registry, model, 1, offset=len(large_onnx))[0] == b""


def test_a_corrupt_artifact_on_disk_is_refused_not_served(
    stack: Stack, registry: Stub, small_onnx: bytes
) -> None:
    model = _name("reg_corrupt")
    artifact = _unique(small_onnx)
    created = _create(registry, model, artifact)
    path = stack.data_dir("registry") / "artifacts" / created.artifact_sha256[:2] / created.artifact_sha256
    assert path.read_bytes() == artifact

    with path.open("r+b") as stored:  # one bit flipped in the middle, size unchanged
        stored.seek(len(artifact) // 2)
        byte = stored.read(1)
        stored.seek(len(artifact) // 2)
        stored.write(bytes([byte[0] ^ 0x01]))

    error = _error(registry.DownloadArtifact, pb.DownloadArtifactRequest(model=model, version=1))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "corrupt" in (error.details() or "")
    resumed = _error(registry.DownloadArtifact, pb.DownloadArtifactRequest(model=model, version=1, offset=10))
    assert resumed.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The metadata is still there; only the bytes are refused.
    assert _version(registry, model, 1).artifact_sha256 == created.artifact_sha256


def test_no_alias_moves_to_a_version_whose_artifact_is_corrupt_even_with_force(
    stack: Stack, registry: Stub, small_onnx: bytes
) -> None:
    model = _name("reg_corrupt_alias")
    intact = _create(registry, model, _unique(small_onnx))
    doomed = _create(registry, model, _unique(small_onnx))
    registry.SetAlias(pb.SetAliasRequest(model=model, alias="champion", version=1, actor="alice"), timeout=10)
    path = stack.data_dir("registry") / "artifacts" / doomed.artifact_sha256[:2] / doomed.artifact_sha256
    stored = path.read_bytes()
    path.write_bytes(
        stored[: len(stored) // 2] + bytes([stored[len(stored) // 2] ^ 0x01]) + stored[len(stored) // 2 + 1 :]
    )

    to_doomed = pb.SetAliasRequest(model=model, alias="champion", version=2, actor="alice", force=True)
    error = _error(registry.SetAlias, to_doomed)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "fails verification" in (error.details() or "") and "corrupt" in (error.details() or "")
    path.unlink()
    missing = _error(registry.SetAlias, to_doomed)
    assert missing.code() == grpc.StatusCode.FAILED_PRECONDITION and "missing" in (missing.details() or "")

    assert _version(registry, model, alias="champion").version == intact.version
    assert [(m.alias, m.to_version) for m in _history(registry, model)] == [("champion", 1)]


# ---------------------------------------------------------------------------------- aliases, tags, search


def test_aliases_move_with_an_audit_trail_and_rollback_restores_the_previous_champion(
    registry: Stub, small_onnx: bytes
) -> None:
    model = _name("reg_alias")
    for _ in range(3):
        _create(registry, model, small_onnx)

    for version in (1, 2, 3):
        moved = registry.SetAlias(
            pb.SetAliasRequest(
                model=model, alias="champion", version=version, actor="alice", reason=f"v{version}"
            ),
            timeout=10,
        )
        assert moved.version == version and "champion" in moved.aliases
    registry.SetAlias(pb.SetAliasRequest(model=model, alias="staging", version=1, actor="bob"), timeout=10)

    back = registry.Rollback(pb.RollbackRequest(model=model, actor="carol", reason="bad canary"), timeout=10)

    assert back.version == 2
    assert _version(registry, model, alias="champion").version == 2
    assert sorted(_version(registry, model, 1).aliases) == ["staging"]
    assert list(_version(registry, model, 3).aliases) == []
    listed = {m.name: m for m in registry.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert dict(listed[model].aliases) == {"champion": 2, "staging": 1}
    assert listed[model].latest_version == 3
    assert [(m.alias, m.from_version, m.to_version, m.actor) for m in _history(registry, model)] == [
        ("champion", 0, 1, "alice"),
        ("champion", 1, 2, "alice"),
        ("champion", 2, 3, "alice"),
        ("staging", 0, 1, "bob"),
        ("champion", 3, 2, "carol"),
    ]
    assert _history(registry, model)[-1].reason == "rollback from v3: bad canary"


def test_models_and_versions_carry_descriptions_and_tags_and_search_filters_them(
    registry: Stub, small_onnx: bytes
) -> None:
    model, other = _name("reg_search"), _name("reg_search_other")
    team = uuid.uuid4().hex[:8]  # a tag value no other test uses, to search across every model
    registered = registry.RegisterModel(
        pb.RegisterModelRequest(
            name=model,
            description="tumour classifier",
            tags={"owner": "ml-team"},
            promotion_policy=pb.PROMOTION_POLICY_AUTOMATIC,
        ),
        timeout=10,
    )
    assert (registered.name, registered.latest_version, registered.description) == (
        model,
        0,
        "tumour classifier",
    )
    for accuracy, dataset_version in ((0.90, "dvA"), (0.95, "dvB"), (0.99, "dvB")):
        _create(
            registry,
            model,
            small_onnx,
            dataset_version=dataset_version,
            metrics={"cv_accuracy": accuracy},
            tags={"team": team, "stage": "dev"},
        )
    _create(
        registry, other, small_onnx, dataset_version="dvB", metrics={"cv_accuracy": 0.97}, tags={"team": team}
    )

    updated = registry.UpdateModelVersion(
        pb.UpdateModelVersionRequest(
            model=model, version=2, description="the keeper", set_tags={"stage": "prod"}, delete_tags=["team"]
        ),
        timeout=10,
    )
    assert (updated.description, dict(updated.tags)) == ("the keeper", {"stage": "prod"})
    changed = registry.UpdateModel(
        pb.UpdateModelRequest(
            name=model,
            description="breast cancer tumour classifier",
            set_tags={"domain": "health"},
            delete_tags=["owner"],
            promotion_policy=pb.PROMOTION_POLICY_MANUAL,
            actor="alice",
        ),
        timeout=10,
    )
    assert changed.description == "breast cancer tumour classifier"
    assert dict(changed.tags) == {"domain": "health"}
    assert (changed.promotion_policy, changed.effective_promotion_policy) == (
        pb.PROMOTION_POLICY_MANUAL,
        pb.PROMOTION_POLICY_MANUAL,
    )
    got = registry.GetModel(pb.GetModelRequest(name=model), timeout=10)
    assert got.latest_version == 3 and got.description == changed.description
    assert [(t.name, list(t.shape)) for t in got.inputs] == [("input", [-1, 30])]
    assert [t.name for t in got.outputs] == ["label", "probabilities"]

    def search(**kwargs: Any) -> list[tuple[str, int]]:
        found = registry.SearchModelVersions(pb.SearchModelVersionsRequest(**kwargs), timeout=10).versions
        return [(v.model, v.version) for v in found]

    assert search(model=model) == [(model, 3), (model, 2), (model, 1)]  # newest first
    assert search(model=model, tags={"team": team}) == [(model, 3), (model, 1)]
    assert search(model=model, tags={"stage": "prod"}) == [(model, 2)]
    assert search(tags={"team": team}) == [(other, 1), (model, 3), (model, 1)]
    assert search(
        model=model, metrics=[pb.MetricFilter(name="cv_accuracy", op=pb.COMPARISON_GE, value=0.95)]
    ) == [(model, 3), (model, 2)]
    assert search(
        model=model,
        metrics=[
            pb.MetricFilter(name="cv_accuracy", op=pb.COMPARISON_GT, value=0.9),
            pb.MetricFilter(name="cv_accuracy", op=pb.COMPARISON_LT, value=0.99),
        ],
    ) == [(model, 2)]
    assert search(model=model, metrics=[pb.MetricFilter(name="f1", op=pb.COMPARISON_GE, value=0)]) == []
    assert search(model=model, status=pb.VERSION_STATUS_PENDING, max_results=2) == [(model, 3), (model, 2)]
    assert search(model=model, status=pb.VERSION_STATUS_READY) == []
    assert search(model=model, dataset_version="dvB") == [(model, 3), (model, 2)]

    registry.SetAlias(pb.SetAliasRequest(model=model, alias="staging", version=3, actor="bob"), timeout=10)
    deleted = registry.DeleteAlias(
        pb.DeleteAliasRequest(model=model, alias="staging", actor="bob", reason="done"), timeout=10
    )
    assert deleted.previous_version == 3
    assert _error(
        registry.GetModelVersion, pb.GetModelVersionRequest(model=model, alias="staging")
    ).code() == (grpc.StatusCode.NOT_FOUND)
    assert [(m.alias, m.from_version, m.to_version) for m in _history(registry, model)] == [
        ("staging", 0, 3),
        ("staging", 3, 0),
    ]


# ---------------------------------------------------------------------------------- lineage


def test_lineage_goes_back_to_ingests_raw_batches_and_forward_from_a_dataset_version(
    stack: Stack, registry: Stub, small_onnx: bytes
) -> None:
    dataset = _name("reg_lineage")
    rng = np.random.default_rng(3)
    batches = [
        pd.DataFrame(rng.normal(size=(30, 3)), columns=["a", "b", "c"]).assign(target=0) for _ in range(2)
    ]
    first, _ = upload(stack, dataset, batches[0])
    second, _ = upload(stack, dataset, batches[1])
    assert first.created and second.created and first.dataset_version != second.dataset_version
    model, other = _name("reg_lineage_m"), _name("reg_lineage_o")
    on_first = _create(registry, model, small_onnx, dataset=dataset, dataset_version=first.dataset_version)
    on_second = _create(registry, model, small_onnx, dataset=dataset, dataset_version=second.dataset_version)
    elsewhere = _create(registry, other, small_onnx, dataset=dataset, dataset_version=first.dataset_version)

    back = registry.GetLineage(pb.GetLineageRequest(model=model, version=on_second.version), timeout=30)
    assert (back.dataset, back.dataset_version) == (dataset, second.dataset_version)
    assert back.parent_dataset_version == first.dataset_version
    assert list(back.batch_ids) == [first.batch_id, second.batch_id]
    assert back.version.run.run_id == on_second.run.run_id
    root = registry.GetLineage(pb.GetLineageRequest(model=model, version=on_first.version), timeout=30)
    assert (root.parent_dataset_version, list(root.batch_ids)) == ("", [first.batch_id])

    forward = registry.ListModelVersions(
        pb.ListModelVersionsRequest(model=model, dataset_version=first.dataset_version), timeout=10
    )
    assert [v.version for v in forward.versions] == [on_first.version]
    everywhere = registry.SearchModelVersions(
        pb.SearchModelVersionsRequest(dataset_version=first.dataset_version), timeout=10
    )
    assert [(v.model, v.version) for v in everywhere.versions] == [
        (other, elsewhere.version),
        (model, on_first.version),
    ]


# ---------------------------------------------------------------------------------- concurrency


_RACER = textwrap.dedent(
    """
    import sys, time
    import grpc
    from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
    from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc

    address, model, actor, versions, count, start_at = sys.argv[1:]
    versions = [int(v) for v in versions.split(",")]
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        time.sleep(max(0.0, float(start_at) - time.time()))  # both racers start together
        for i in range(int(count)):
            request = pb.SetAliasRequest(
                model=model, alias="champion", version=versions[i % len(versions)],
                actor=actor, reason=f"{actor} move {i}",
            )
            stub.SetAlias(request, timeout=30)
    """
)


def test_racing_promotions_from_two_processes_leave_one_consistent_audit_chain(
    stack: Stack, registry: Stub, small_onnx: bytes
) -> None:
    model, count = _name("reg_race"), 40
    for _ in range(3):
        _create(registry, model, small_onnx)
    plans = {"racer-a": [1, 2, 3], "racer-b": [3, 1, 2, 2]}
    start_at = time.time() + 3.0
    racers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RACER,
                stack.address("registry"),
                model,
                actor,
                ",".join(map(str, plan)),
                str(count),
                str(start_at),
            ],
            cwd=REPO,
        )
        for actor, plan in plans.items()
    ]
    for racer in racers:
        assert racer.wait(timeout=120) == 0

    moves = [m for m in _history(registry, model) if m.alias == "champion"]
    assert len(moves) == 2 * count
    assert moves[0].from_version == 0
    for before, after in itertools.pairwise(moves):
        assert after.from_version == before.to_version, (before, after)
    for actor, plan in plans.items():
        mine = [m for m in moves if m.actor == actor]
        assert [m.reason for m in mine] == [f"{actor} move {i}" for i in range(count)]
        assert [m.to_version for m in mine] == [plan[i % len(plan)] for i in range(count)]
    assert _version(registry, model, alias="champion").version == moves[-1].to_version
    # Every move was announced once, and every real change of champion promoted once.
    changed = _of(_read_topic(stack, ModelAliasChanged, model), model)
    assert [(e.previous_version or 0, e.model_version, e.actor) for e in changed] == [
        (m.from_version, m.to_version, m.actor) for m in moves
    ]
    promoted = _of(_read_topic(stack, ModelPromoted, model), model)
    assert [(e.previous_version or 0, e.model_version) for e in promoted] == [
        (m.from_version, m.to_version) for m in moves if m.from_version != m.to_version
    ]


# ---------------------------------------------------------------------------------- durability


def test_everything_the_registry_acknowledged_survives_a_sigkill(
    stack: Stack, registry: Stub, large_onnx: bytes, small_onnx: bytes
) -> None:
    model = _name("reg_durable")
    small = _unique(small_onnx)
    _create(registry, model, large_onnx, tags={"kind": "forest"}, description="big one", key="k-1")
    _create(registry, model, small, tags={"kind": "linear"}, description="small one", key="k-2")
    registry.SetAlias(pb.SetAliasRequest(model=model, alias="champion", version=1, actor="alice"), timeout=10)
    registry.SetAlias(pb.SetAliasRequest(model=model, alias="champion", version=2, actor="bob"), timeout=10)
    registry.SetAlias(pb.SetAliasRequest(model=model, alias="challenger", version=1, actor="bob"), timeout=10)

    def snapshot(stub: Stub) -> tuple[Any, ...]:
        listed = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
        return (
            listed[model],
            list(stub.ListModelVersions(pb.ListModelVersionsRequest(model=model), timeout=10).versions),
            _history(stub, model),
        )

    before = snapshot(registry)
    try:
        stack.kill_service("registry", signal.SIGKILL)
    finally:
        stack.start_service("registry")

    with grpc.insecure_channel(stack.address("registry")) as channel:
        restarted = registry_pb2_grpc.RegistryServiceStub(channel)
        assert snapshot(restarted) == before
        versions = before[1]
        assert [(v.version, dict(v.tags), v.description) for v in versions] == [
            (1, {"kind": "forest"}, "big one"),
            (2, {"kind": "linear"}, "small one"),
        ]
        assert [m.actor for m in before[2]] == ["alice", "bob", "bob"]
        for version, artifact in ((1, large_onnx), (2, small)):
            data, chunks = _download(restarted, model, version)
            assert data == artifact
            assert (
                hashlib.sha256(data).hexdigest() == chunks[0].sha256 == versions[version - 1].artifact_sha256
            )
        # The idempotency keys survived too: a retried upload still finds its version.
        assert _create(restarted, model, small, key="k-2").version == 2


# ---------------------------------------------------------------------------------- verdicts and events


def test_a_redelivered_verdict_promotes_once_and_every_change_is_announced_once(
    stack: Stack, registry: Stub, small_onnx: bytes
) -> None:
    model = _name("reg_events")
    for _ in range(2):
        _create(registry, model, small_onnx)

    _deliver(stack, _verdict(model, 1, passed=True, accuracy=0.96), times=2)  # a redelivery

    champion = _version(registry, model, alias="champion")
    assert (champion.version, champion.status) == (1, pb.VERSION_STATUS_READY)
    assert champion.validation.passed
    assert _version(registry, model, 2).status == pb.VERSION_STATUS_PENDING
    assert [(m.alias, m.from_version, m.to_version, m.actor) for m in _history(registry, model)] == [
        ("champion", 0, 1, "validator")
    ]
    found = registry.SearchModelVersions(
        pb.SearchModelVersionsRequest(
            model=model,
            metrics=[pb.MetricFilter(name="validation.accuracy", op=pb.COMPARISON_GE, value=0.95)],
        ),
        timeout=10,
    )
    assert [v.version for v in found.versions] == [1]
    registry.SetAlias(pb.SetAliasRequest(model=model, alias="staging", version=2, actor="bob"), timeout=10)
    registry.DeleteAlias(pb.DeleteAliasRequest(model=model, alias="staging", actor="bob"), timeout=10)

    promoted = _of(_read_topic(stack, ModelPromoted, model), model)
    assert [(e.model_version, e.previous_version, e.actor) for e in promoted] == [(1, None, "validator")]
    created = _of(_read_topic(stack, ModelVersionCreated, model), model)
    assert sorted((e.model_version, e.status) for e in created) == [(1, "pending"), (2, "pending")]
    assert {e.artifact_sha256 for e in created} == {hashlib.sha256(small_onnx).hexdigest()}
    statuses = _of(_read_topic(stack, ModelVersionStatusChanged, model), model)
    assert [(e.model_version, e.previous_status, e.status) for e in statuses] == [(1, "pending", "ready")]
    aliases = _of(_read_topic(stack, ModelAliasChanged, model), model)
    assert [(e.alias, e.action, e.previous_version, e.model_version, e.actor) for e in aliases] == [
        ("champion", "set", None, 1, "validator"),
        ("staging", "set", None, 2, "bob"),
        ("staging", "deleted", 2, None, "bob"),
    ]


def test_a_failed_version_needs_force_and_a_manual_policy_makes_a_challenger(
    stack: Stack, registry: Stub, small_onnx: bytes
) -> None:
    model = _name("reg_policy")
    registry.RegisterModel(
        pb.RegisterModelRequest(name=model, promotion_policy=pb.PROMOTION_POLICY_MANUAL), timeout=10
    )
    for _ in range(2):
        _create(registry, model, small_onnx)

    _deliver(stack, _verdict(model, 1, passed=True, accuracy=0.97))
    _deliver(stack, _verdict(model, 2, passed=False, accuracy=0.41))

    assert _version(registry, model, alias="challenger").version == 1
    assert _error(
        registry.GetModelVersion, pb.GetModelVersionRequest(model=model, alias="champion")
    ).code() == (grpc.StatusCode.NOT_FOUND)
    assert _version(registry, model, 1).status == pb.VERSION_STATUS_READY
    failed = _version(registry, model, 2)
    assert failed.status == pb.VERSION_STATUS_FAILED and not failed.validation.passed
    refused = _error(
        registry.SetAlias, pb.SetAliasRequest(model=model, alias="champion", version=2, actor="alice")
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "force" in (refused.details() or "")
    forced = registry.SetAlias(
        pb.SetAliasRequest(model=model, alias="champion", version=2, actor="alice", force=True), timeout=10
    )
    assert forced.version == 2
    promoted = _of(_read_topic(stack, ModelPromoted, model), model)
    assert [(e.model_version, e.previous_version, e.actor) for e in promoted] == [(2, None, "alice")]
    statuses = _of(_read_topic(stack, ModelVersionStatusChanged, model), model)
    assert sorted((e.model_version, e.status) for e in statuses) == [(1, "ready"), (2, "failed")]


# ---------------------------------------------------------------------------------- bad input


def test_bad_requests_get_a_status_code_and_a_message(registry: Stub, small_onnx: bytes) -> None:
    model = _name("reg_bad")
    _create(registry, model, small_onnx)
    not_found, invalid = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT

    def refused(code: grpc.StatusCode, words: str, call: Any, request: Any) -> None:
        error = _error(call, request)
        details = error.details() or ""
        assert (error.code(), words.lower() in details.lower()) == (code, True), (request, details)

    def upload_of(name: str, *chunks: bytes) -> Iterator[pb.CreateModelVersionRequest]:
        header = pb.VersionHeader(model=name, dataset="ds", dataset_version="v")
        yield pb.CreateModelVersionRequest(header=header)
        for chunk in chunks:
            yield pb.CreateModelVersionRequest(chunk=chunk)

    # Unknown things.
    refused(not_found, "no_such", registry.GetModel, pb.GetModelRequest(name="no_such_model"))
    get = pb.GetModelVersionRequest
    refused(not_found, "no_such", registry.GetModelVersion, get(model="no_such_model", version=1))
    refused(not_found, "version 9", registry.GetModelVersion, get(model=model, version=9))
    refused(not_found, "champion", registry.GetModelVersion, get(model=model, alias="champion"))
    set_alias = pb.SetAliasRequest
    refused(not_found, "version 9", registry.SetAlias, set_alias(model=model, alias="champion", version=9))
    refused(not_found, "nope", registry.DeleteAlias, pb.DeleteAliasRequest(model=model, alias="nope"))
    download = pb.DownloadArtifactRequest
    refused(not_found, "version 9", registry.DownloadArtifact, download(model=model, version=9))
    # Bad names: aliases, and path-like model names.
    refused(invalid, "alias", registry.SetAlias, set_alias(model=model, alias="Champion!", version=1))
    refused(invalid, "alias", registry.SetAlias, set_alias(model=model, alias="", version=1))
    refused(invalid, "alias", registry.GetModelVersion, get(model=model, alias="../x"))
    refused(invalid, "model", registry.GetModelVersion, get(model="../x", version=1))
    refused(invalid, "model", registry.RegisterModel, pb.RegisterModelRequest(name="../x"))
    refused(invalid, "model", registry.GetAliasHistory, pb.GetAliasHistoryRequest(model="a/b"))
    refused(invalid, "model", registry.CreateModelVersion, upload_of("../x", small_onnx))
    # Bad uploads: empty, not ONNX, headless, over the limit.
    refused(invalid, "empty", registry.CreateModelVersion, upload_of(model))
    refused(invalid, "ONNX", registry.CreateModelVersion, upload_of(model, b"not a model"))
    refused(invalid, "header", registry.CreateModelVersion, iter([pb.CreateModelVersionRequest(chunk=b"x")]))
    too_big = upload_of(model, *[b"\0" * MiB] * (MAX_ARTIFACT_BYTES // MiB + 1))
    refused(invalid, "limit", registry.CreateModelVersion, too_big)
    # Bad ranges and selectors.
    refused(invalid, "offset", registry.DownloadArtifact, download(model=model, version=1, offset=10**9))
    refused(invalid, "offset", registry.DownloadArtifact, download(model=model, version=1, offset=-1))
    refused(invalid, "version", registry.GetModelVersion, get(model=model))
    search = pb.SearchModelVersionsRequest(max_results=5000)
    refused(invalid, "max_results", registry.SearchModelVersions, search)
    # A taken name.
    refused(
        grpc.StatusCode.ALREADY_EXISTS, model, registry.RegisterModel, pb.RegisterModelRequest(name=model)
    )

    # Nothing bad got in: still one version, no alias, and the server answers.
    listed = registry.ListModelVersions(pb.ListModelVersionsRequest(model=model), timeout=10)
    assert [v.version for v in listed.versions] == [1]
    assert _history(registry, model) == []
