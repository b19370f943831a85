import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from cascade.client.calls import RemoteService
from cascade.client.ingest import IngestClient
from cascade.events import DataArrived
from cascade.grpc_io import open_channel
from cascade.services.ingest.core import IngestCore
from cascade.services.ingest.grpc_api import IngestServicer
from cascade.services.ingest.store import IngestStore
from cascade.stubs.cascade.ingest.v1 import ingest_pb2 as pb
from cascade.stubs.cascade.ingest.v1 import ingest_pb2_grpc
from tests.grpc_server import serving


@pytest.fixture
async def ingest(tmp_path: Path) -> AsyncIterator[ingest_pb2_grpc.IngestServiceStub]:
    async def emit(event: DataArrived) -> None:
        pass

    servicer = IngestServicer(IngestCore(IngestStore(tmp_path), emit), max_upload_bytes=1_000_000)
    register = lambda s: ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, s)  # noqa: E731
    async with serving(register) as address, open_channel(address) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


def _upload(dataset: str, data: bytes, chunk: int = 1000) -> list[pb.UploadBatchRequest]:
    header = pb.BatchHeader(dataset=dataset, format=pb.FILE_FORMAT_CSV, target="target", source="wine.csv")
    return [pb.UploadBatchRequest(header=header)] + [
        pb.UploadBatchRequest(chunk=data[i : i + chunk]) for i in range(0, len(data), chunk)
    ]


async def test_upload_then_download_gives_back_the_clean_rows(
    ingest: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    wine = load_wine(as_frame=True).frame
    response = await ingest.UploadBatch(iter(_upload("wine", wine.to_csv(index=False).encode())))
    assert response.created and response.report.rows_accepted == len(wine)
    info = await ingest.GetDatasetVersion(pb.GetDatasetVersionRequest(dataset="wine"))
    assert info.version == response.dataset_version
    assert list(info.features) == [c for c in wine.columns if c != "target"]
    assert info.task == "classification" and len(info.profile) == len(info.features)


@pytest.mark.parametrize(
    ("requests", "code", "message"),
    [
        ([pb.UploadBatchRequest(chunk=b"a,b")], grpc.StatusCode.INVALID_ARGUMENT, "header"),
        (_upload("wine", b""), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (_upload("../etc", b"a,target\n1,0\n"), grpc.StatusCode.INVALID_ARGUMENT, "invalid dataset name"),
        (
            _upload("wine", b"a,b\n1,2\n"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "target column 'target' is missing",
        ),
        (_upload("wine", b"x" * 1_000_001, 100_000), grpc.StatusCode.INVALID_ARGUMENT, "exceeds the limit"),
    ],
)
async def test_bad_uploads_get_invalid_argument_with_a_reason(
    ingest: ingest_pb2_grpc.IngestServiceStub,
    requests: list[pb.UploadBatchRequest],
    code: grpc.StatusCode,
    message: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.UploadBatch(iter(requests))
    assert raised.value.code() == code
    assert message in (raised.value.details() or "")


async def test_unknown_datasets_and_versions_are_not_found(ingest: ingest_pb2_grpc.IngestServiceStub) -> None:
    for request in (
        pb.GetDatasetVersionRequest(dataset="nope"),
        pb.GetDatasetVersionRequest(dataset="nope", version="abc"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await ingest.GetDatasetVersion(request)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def _ingest(channel: grpc.aio.Channel) -> IngestClient:
    return IngestClient(RemoteService("ingest", channel))


async def test_fetch_dataset_streams_and_verifies_a_version(tmp_path: Path) -> None:
    async def emit(event: DataArrived) -> None:
        pass

    wine = load_wine(as_frame=True).frame
    servicer = IngestServicer(IngestCore(IngestStore(tmp_path), emit), max_upload_bytes=10_000_000)
    register = lambda s: ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, s)  # noqa: E731
    async with serving(register) as address, open_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        await stub.UploadBatch(iter(_upload("wine", wine.to_csv(index=False).encode())))
        info, frame = await _ingest(channel).download_dataset("wine")
    assert len(frame) == info.rows == len(wine)
    assert frame.drop(columns="target").to_numpy().tolist() == wine.drop(columns="target").to_numpy().tolist()


async def test_a_registered_dataset_cleans_by_its_schema_and_keeps_rejected_rows(
    ingest: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    schema = pb.DatasetSchema(
        target="y",
        task="classification",
        features=[
            pb.FeatureSpec(name="x", type="numeric", min=0, max=10),
            pb.FeatureSpec(name="c", type="categorical", categories=["a", "b"]),
        ],
        policy=pb.CleaningPolicy(missing="impute", impute="median", out_of_range="clip"),
    )
    registered = await ingest.RegisterDataset(pb.RegisterDatasetRequest(dataset="decl", schema=schema))
    assert registered.schema.declared and registered.schema.policy.unknown_category == "reject"
    got = await ingest.GetDataset(pb.GetDatasetRequest(dataset="decl"))
    assert got.schema == registered.schema and got.head_version == ""

    data = b"x,c,y\n1,a,0\n20,b,1\n,a,1\n3,zz,0\n"
    response = await ingest.UploadBatch(iter(_upload("decl", data)))
    report = response.report
    assert (report.rows_accepted, report.rows_repaired, report.rows_rejected) == (3, 2, 1)
    assert [(n.row, n.note) for n in report.repaired] == [
        (3, "x: 20 outside [0, 10], clipped to 10"),  # lines of the file: the header is line 1
        (4, "x: missing, imputed median 5.5"),
    ]
    assert dict(report.issues) == {"missing": 1, "unknown_category": 1, "out_of_range": 1}
    rejected = await ingest.ListRejectedRows(
        pb.ListRejectedRowsRequest(dataset="decl", batch_id=response.batch_id)
    )
    assert [(r.row, r.reason, json.loads(r.values_json)) for r in rejected.rows] == [
        (5, "c: unknown category 'zz'", {"x": 3.0, "c": "zz", "y": 0})
    ]
    batches = await ingest.ListBatches(pb.ListBatchesRequest(dataset="decl"))
    assert [b.report.rows_repaired for b in batches.batches] == [2]

    other = pb.DatasetSchema(
        target="y", task="regression", features=[pb.FeatureSpec(name="x", type="numeric")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.RegisterDataset(pb.RegisterDatasetRequest(dataset="decl", schema=other))
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await ingest.ListDatasets(pb.ListDatasetsRequest())
    assert [(d.dataset, d.versions) for d in listed.datasets] == [("decl", 1)]


async def test_an_invalid_schema_is_invalid_argument(ingest: ingest_pb2_grpc.IngestServiceStub) -> None:
    bad = pb.DatasetSchema(
        target="y", task="classification", features=[pb.FeatureSpec(name="c", type="categorical")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.RegisterDataset(pb.RegisterDatasetRequest(dataset="bad", schema=bad))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs its categories" in (raised.value.details() or "")


async def test_infer_schema_suggests_types_without_registering(
    ingest: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    data = b"n,c,b,y\n1,red,true,0\n2,blue,false,1\n"
    schema = await ingest.InferSchema(pb.InferSchemaRequest(format=pb.FILE_FORMAT_CSV, data=data, target="y"))
    assert [(f.name, f.type, list(f.categories)) for f in schema.features] == [
        ("n", "integer", []),
        ("c", "categorical", ["blue", "red"]),
        ("b", "boolean", []),
    ]
    assert schema.task == "classification" and not schema.declared
    assert not (await ingest.ListDatasets(pb.ListDatasetsRequest())).datasets


async def test_versions_are_listed_and_served_whole_or_in_slices(tmp_path: Path) -> None:
    async def emit(event: DataArrived) -> None:
        pass

    wine = load_wine(as_frame=True).frame
    servicer = IngestServicer(IngestCore(IngestStore(tmp_path), emit), max_upload_bytes=10_000_000)
    register = lambda s: ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, s)  # noqa: E731
    async with serving(register) as address, open_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for part in (wine.iloc[:100], wine.iloc[100:150], wine.iloc[150:]):
            await stub.UploadBatch(iter(_upload("wine", part.to_csv(index=False).encode())))
        versions = (await stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset="wine"))).versions
        assert [v.rows for v in versions] == [100, 150, len(wine)]
        assert [len(v.segments) for v in versions] == [1, 2, 3]
        assert [v.parent for v in versions[1:]] == [v.version for v in versions[:-1]]
        _, whole = await _ingest(channel).download_dataset("wine")
        _, first = await _ingest(channel).download_dataset("wine", versions[0].version)
        sliced = await _download(
            stub, pb.DownloadDatasetVersionRequest(dataset="wine", row_start=10, row_end=20)
        )
        latest = await _download(stub, pb.DownloadDatasetVersionRequest(dataset="wine", last_batches=1))
        _, two_latest = await _ingest(channel).download_dataset("wine", last_batches=2)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _download(stub, pb.DownloadDatasetVersionRequest(dataset="wine", row_start=5, row_end=999))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    expected = wine.to_numpy(dtype="float64")
    assert two_latest.to_numpy().tolist() == expected[100:].tolist()
    assert whole.to_numpy().tolist() == expected.tolist()
    assert first.to_numpy().tolist() == expected[:100].tolist()
    assert sliced.to_numpy().tolist() == expected[10:20].tolist()
    assert latest.to_numpy().tolist() == expected[150:].tolist()


async def _download(
    stub: ingest_pb2_grpc.IngestServiceStub, request: pb.DownloadDatasetVersionRequest
) -> pd.DataFrame:
    data = b""
    digest = ""
    async for chunk in stub.DownloadDatasetVersion(request):
        data += chunk.data
        digest = chunk.sha256
    assert hashlib.sha256(data).hexdigest() == digest
    return pd.read_parquet(io.BytesIO(data))
