"""The ingest and registry clients against tiny fake servicers on a real loopback gRPC server: the
one error mapping, the resumable verified downloads, and the uploads' streams."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest

from cascade.client.downloads import MAX_RESUMES
from cascade.client.ingest import IngestClient
from cascade.client.records import TrainingRun, VersionStatus
from cascade.client.registry import MetricFilter, RegistryClient
from cascade.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteFailure,
    Unavailable,
)
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc
from tests.grpc_server import serving

ARTIFACT = bytes(range(256)) * 40  # 10 KiB, sent in 1 KiB chunks
CHUNK = 1024


@dataclass
class Stream:
    """What the fake's download stream does: send `data` from the requested offset in CHUNK pieces,
    breaking with `break_with` after `break_after` chunks of each of the first `breaks` calls."""

    data: bytes
    breaks: int = 0
    break_after: int = 2
    break_with: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    sha256: str = ""
    offsets: list[int] = field(default_factory=list)

    async def chunks(self, offset: int, context: Any, make: Callable[..., Any]) -> AsyncIterator[Any]:
        self.offsets.append(offset)
        digest = self.sha256 or hashlib.sha256(self.data).hexdigest()
        broken = len(self.offsets) <= self.breaks
        for sent, start in enumerate(range(offset, len(self.data), CHUNK)):
            if broken and sent == self.break_after:
                await context.abort(self.break_with, "connection reset")
            piece = self.data[start : start + CHUNK]
            yield make(data=piece, offset=start, total_size=len(self.data), sha256=digest)


class FakeRegistry(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self) -> None:
        self.download = Stream(ARTIFACT)
        self.failure: tuple[grpc.StatusCode, str] | None = None
        self.requests: list[Any] = []
        self.uploaded: list[registry_pb2.CreateModelVersionRequest] = []

    async def GetModelVersion(self, request: Any, context: Any) -> registry_pb2.ModelVersion:
        self.requests.append(request)
        if self.failure:
            await context.abort(*self.failure)
        return registry_pb2.ModelVersion(
            model=request.model, version=3, status=registry_pb2.VERSION_STATUS_READY
        )

    async def SearchModelVersions(self, request: Any, context: Any) -> registry_pb2.ListModelVersionsResponse:
        self.requests.append(request)
        return registry_pb2.ListModelVersionsResponse(
            versions=[registry_pb2.ModelVersion(model="m", version=2)]
        )

    async def CreateModelVersion(self, requests: Any, context: Any) -> registry_pb2.ModelVersion:
        self.uploaded = [r async for r in requests]
        header = self.uploaded[0].header
        return registry_pb2.ModelVersion(
            model=header.model, version=1, idempotency_key=header.idempotency_key
        )

    async def DownloadArtifact(self, request: Any, context: Any) -> AsyncIterator[registry_pb2.ArtifactChunk]:
        async for chunk in self.download.chunks(request.offset, context, registry_pb2.ArtifactChunk):
            yield chunk


class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, table: bytes) -> None:
        self.download = Stream(table)
        self.described: list[ingest_pb2.GetDatasetVersionRequest] = []
        self.downloaded: list[ingest_pb2.DownloadDatasetVersionRequest] = []
        self.uploaded: list[ingest_pb2.UploadBatchRequest] = []
        self.registered: list[ingest_pb2.RegisterDatasetRequest] = []

    async def GetDatasetVersion(self, request: Any, context: Any) -> ingest_pb2.DatasetVersion:
        self.described.append(request)
        return ingest_pb2.DatasetVersion(
            dataset=request.dataset, version="v-latest", features=["a"], target="y"
        )

    async def DownloadDatasetVersion(self, request: Any, context: Any) -> AsyncIterator[ingest_pb2.DataChunk]:
        self.downloaded.append(request)
        async for chunk in self.download.chunks(request.offset, context, ingest_pb2.DataChunk):
            yield chunk

    async def ListBatches(self, request: Any, context: Any) -> ingest_pb2.ListBatchesResponse:
        report = ingest_pb2.BatchReport(
            rows_received=3,
            rows_accepted=2,
            rows_rejected=1,
            rejected=[ingest_pb2.RejectedRow(row=3, reason="target is missing")],
            issues={"missing": 1},
        )
        batch = ingest_pb2.Batch(batch_id="b1", version=request.version, source="a.csv", report=report)
        batch.received_at.FromSeconds(1_700_000_000)
        return ingest_pb2.ListBatchesResponse(batches=[batch])

    async def RegisterDataset(self, request: Any, context: Any) -> ingest_pb2.Dataset:
        self.registered.append(request)
        return ingest_pb2.Dataset(dataset=request.dataset, schema=request.schema)

    async def InferSchema(self, request: Any, context: Any) -> ingest_pb2.DatasetSchema:
        return ingest_pb2.DatasetSchema(
            features=[ingest_pb2.FeatureSpec(name="a", type="integer", min=0.0)],
            target=request.target,
            task="classification",
        )

    async def UploadBatch(self, requests: Any, context: Any) -> ingest_pb2.UploadBatchResponse:
        self.uploaded = [r async for r in requests]
        return ingest_pb2.UploadBatchResponse(batch_id="b1", dataset_version="v1", created=True)


@pytest.fixture
async def registry() -> AsyncIterator[tuple[FakeRegistry, RegistryClient]]:
    fake = FakeRegistry()
    async with (
        serving(
            lambda server: registry_pb2_grpc.add_RegistryServiceServicer_to_server(fake, server)
        ) as address,
        RegistryClient.connect(address) as client,
    ):
        yield fake, client


def _parquet(rows: int) -> bytes:
    out = io.BytesIO()
    pd.DataFrame({"a": range(rows), "y": [i % 2 for i in range(rows)]}).to_parquet(out)
    return out.getvalue()


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[FakeIngest, IngestClient]]:
    fake = FakeIngest(_parquet(2000))
    async with (
        serving(lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(fake, server)) as address,
        IngestClient.connect(address) as client,
    ):
        yield fake, client


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
        (grpc.StatusCode.INTERNAL, RemoteFailure),
    ],
)
async def test_a_failed_call_is_the_cascade_error_of_its_status_naming_service_and_work(
    registry: tuple[FakeRegistry, RegistryClient], status: grpc.StatusCode, error: type[Exception]
) -> None:
    fake, client = registry
    fake.failure = (status, "version 7 of m not found")
    with pytest.raises(error) as raised:
        await client.get_version("m", 7)
    assert raised.value.status is status  # type: ignore[attr-defined]
    message = str(raised.value)
    assert message.startswith("registry at 127.0.0.1:")
    assert "reading m v7: version 7 of m not found" in message


async def test_a_version_is_chosen_by_exactly_one_selector(
    registry: tuple[FakeRegistry, RegistryClient],
) -> None:
    fake, client = registry
    by_alias = await client.get_version("m", alias="champion")
    assert (by_alias.version, by_alias.status) == (3, VersionStatus.ready)
    await client.get_version("m", idempotency_key="k1")
    assert [r.WhichOneof("selector") for r in fake.requests] == ["alias", "idempotency_key"]
    assert fake.requests[1].idempotency_key == "k1"
    with pytest.raises(InvalidArgument, match="exactly one"):
        await client.get_version("m", 3, alias="champion")
    with pytest.raises(InvalidArgument, match="exactly one"):
        await client.get_version("m")
    assert len(fake.requests) == 2  # refused before any call


async def test_a_download_broken_midway_resumes_from_the_bytes_received(
    registry: tuple[FakeRegistry, RegistryClient],
) -> None:
    fake, client = registry
    fake.download.breaks = 2
    assert await client.download_artifact("m", 3) == ARTIFACT
    # Two chunks arrived before each break: the second call asks from 2 KiB, the third from 4 KiB.
    assert fake.download.offsets == [0, 2 * CHUNK, 4 * CHUNK]


async def test_a_download_that_keeps_breaking_gives_up_after_its_budget(
    registry: tuple[FakeRegistry, RegistryClient],
) -> None:
    fake, client = registry
    fake.download.breaks = 100
    with pytest.raises(Unavailable, match="downloading the artifact of m v3"):
        await client.download_artifact("m", 3)
    assert len(fake.download.offsets) == 1 + MAX_RESUMES


async def test_a_break_before_any_byte_is_not_resumed(registry: tuple[FakeRegistry, RegistryClient]) -> None:
    fake, client = registry
    fake.download.breaks, fake.download.break_after = 1, 0
    with pytest.raises(Unavailable):
        await client.download_artifact("m", 3)
    assert fake.download.offsets == [0]


async def test_a_break_of_another_kind_is_not_resumed(registry: tuple[FakeRegistry, RegistryClient]) -> None:
    fake, client = registry
    fake.download.breaks, fake.download.break_with = 1, grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(PermissionDenied):
        await client.download_artifact("m", 3)
    assert fake.download.offsets == [0]


async def test_a_corrupt_download_is_a_failed_precondition(
    registry: tuple[FakeRegistry, RegistryClient],
) -> None:
    fake, client = registry
    fake.download.sha256 = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(FailedPrecondition, match="corrupt"):
        await client.download_artifact("m", 3)


async def test_a_resumed_download_of_a_file_that_changed_is_refused(
    registry: tuple[FakeRegistry, RegistryClient],
) -> None:
    fake, client = registry
    fake.download.breaks = 1
    original = fake.download.chunks

    async def changed(offset: int, context: Any, make: Callable[..., Any]) -> AsyncIterator[Any]:
        if offset:  # the resumed call serves another file
            fake.download.sha256 = "0" * 64
        async for chunk in original(offset, context, make):
            yield chunk

    fake.download.chunks = changed  # type: ignore[method-assign]
    with pytest.raises(FailedPrecondition, match="changed while resuming"):
        await client.download_artifact("m", 3)


async def test_a_version_is_uploaded_as_its_header_then_chunks(
    registry: tuple[FakeRegistry, RegistryClient],
) -> None:
    fake, client = registry
    artifact = b"x" * (3 * 1024 * 1024 + 5)
    run = TrainingRun("r1", {"depth": "3"}, {"accuracy": 0.9}, 7, 1.5, "0.1")
    version = await client.create_version(
        "m", artifact, dataset="d", dataset_version="v1", run=run, idempotency_key="k", tags={"t": "1"}
    )
    assert (version.model, version.version, version.idempotency_key) == ("m", 1, "k")
    header = fake.uploaded[0].header
    assert (header.model, header.dataset_version, header.run.run_id, header.run.seed) == ("m", "v1", "r1", 7)
    assert dict(header.run.metrics) == {"accuracy": 0.9}
    assert b"".join(r.chunk for r in fake.uploaded[1:]) == artifact
    assert len(fake.uploaded) == 1 + 4  # 1 MiB chunks


async def test_search_sends_the_filters_as_the_registry_reads_them(
    registry: tuple[FakeRegistry, RegistryClient],
) -> None:
    fake, client = registry
    found = await client.search_versions(
        "m",
        tags={"task": "regression"},
        metrics=[MetricFilter("cv_r2", ">=", 0.5)],
        status=VersionStatus.ready,
    )
    assert [v.version for v in found] == [2]
    request = fake.requests[-1]
    assert dict(request.tags) == {"task": "regression"}
    assert (request.metrics[0].name, request.metrics[0].op, request.metrics[0].value) == (
        "cv_r2",
        registry_pb2.COMPARISON_GE,
        0.5,
    )
    assert request.status == registry_pb2.VERSION_STATUS_READY


async def test_a_dataset_download_resolves_the_latest_version_then_resumes_on_it(
    ingest: tuple[FakeIngest, IngestClient],
) -> None:
    fake, client = ingest
    fake.download.breaks = 1
    info, frame = await client.download_dataset("d", last_batches=2)
    assert info.version == "v-latest"
    assert list(frame.columns) == ["a", "y"]
    assert len(frame) == 2000
    assert [(r.version, r.offset, r.last_batches) for r in fake.downloaded] == [
        ("v-latest", 0, 2),
        ("v-latest", 2 * CHUNK, 2),
    ]


async def test_a_file_is_uploaded_with_the_format_of_its_suffix_and_its_name_as_source(
    ingest: tuple[FakeIngest, IngestClient], tmp_path: Path
) -> None:
    fake, client = ingest
    path = tmp_path / "batch-7.parquet"
    path.write_bytes(_parquet(10))
    result = await client.upload_batch(path, "d", target="y")
    assert (result.batch_id, result.dataset_version, result.created) == ("b1", "v1", True)
    header = fake.uploaded[0].header
    assert (header.dataset, header.format, header.target, header.source) == (
        "d",
        ingest_pb2.FILE_FORMAT_PARQUET,
        "y",
        "batch-7.parquet",
    )
    assert b"".join(r.chunk for r in fake.uploaded[1:]) == path.read_bytes()


async def test_bytes_are_uploaded_as_csv_unless_they_are_parquet(
    ingest: tuple[FakeIngest, IngestClient],
) -> None:
    fake, client = ingest
    await client.upload_batch(b"a,target\n1,0\n", "d")
    assert fake.uploaded[0].header.format == ingest_pb2.FILE_FORMAT_CSV
    await client.upload_batch(_parquet(3), "d")
    assert fake.uploaded[0].header.format == ingest_pb2.FILE_FORMAT_PARQUET


async def test_a_file_of_unknown_format_is_refused_before_any_call(
    ingest: tuple[FakeIngest, IngestClient], tmp_path: Path
) -> None:
    fake, client = ingest
    path = tmp_path / "batch.xlsx"
    path.write_bytes(b"whatever")
    with pytest.raises(InvalidArgument, match=r"batch\.xlsx"):
        await client.upload_batch(path, "d")
    assert fake.uploaded == []


async def test_batches_come_back_as_records_with_their_reports(
    ingest: tuple[FakeIngest, IngestClient],
) -> None:
    _, client = ingest
    [batch] = await client.list_batches("d", "v1")
    assert (batch.batch_id, batch.version, batch.source) == ("b1", "v1", "a.csv")
    assert batch.received_at is not None
    assert batch.received_at.timestamp() == 1_700_000_000
    assert (batch.report.rows_received, batch.report.rows_rejected, batch.report.issues) == (
        3,
        1,
        {"missing": 1},
    )
    assert [(r.row, r.reason) for r in batch.report.rejected] == [(3, "target is missing")]


async def test_an_inferred_schema_is_json_that_registers_as_it_is(
    ingest: tuple[FakeIngest, IngestClient],
) -> None:
    fake, client = ingest
    schema = await client.infer_schema(b"a,y\n1,0\n", target="y")
    assert schema == {
        "features": [{"name": "a", "type": "integer", "min": 0.0}],
        "target": "y",
        "task": "classification",
    }
    dataset = await client.register_dataset("d", {**schema, "declared": False})
    assert (dataset.dataset, dataset.target, dataset.task) == ("d", "y", "classification")
    assert fake.registered[0].schema.features[0].name == "a"


async def test_a_malformed_schema_is_refused_before_any_call(ingest: tuple[FakeIngest, IngestClient]) -> None:
    fake, client = ingest
    with pytest.raises(InvalidArgument, match="not a valid dataset schema"):
        await client.register_dataset("d", {"features": [{"name": "a", "kind": "integer"}]})
    assert fake.registered == []


async def test_a_dataset_streamed_to_a_file_resumes_and_is_the_served_file(
    ingest: tuple[FakeIngest, IngestClient], tmp_path: Path
) -> None:
    fake, client = ingest
    fake.download.breaks = 1
    path = tmp_path / "spool.parquet"
    size = await client.download_dataset_to_file("d", "v-latest", path, last_batches=2)
    assert size == len(fake.download.data) and path.read_bytes() == fake.download.data
    assert [(r.offset, r.last_batches) for r in fake.downloaded] == [(0, 2), (2 * CHUNK, 2)]


async def test_a_corrupt_dataset_file_is_refused_and_removed(
    ingest: tuple[FakeIngest, IngestClient], tmp_path: Path
) -> None:
    fake, client = ingest
    fake.download.sha256 = hashlib.sha256(b"something else").hexdigest()
    path = tmp_path / "spool.parquet"
    with pytest.raises(FailedPrecondition, match="corrupt"):
        await client.download_dataset_to_file("d", "v-latest", path)
    assert not path.exists()
