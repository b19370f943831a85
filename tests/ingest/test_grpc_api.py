from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from sklearn.datasets import load_wine

from services.ingest.core import IngestCore
from services.ingest.grpc_api import IngestServicer
from services.ingest.store import IngestStore
from shared.clients import fetch_dataset
from shared.events import DataArrived
from shared.grpc_io import open_channel
from shared.stubs.cascade.ingest.v1 import ingest_pb2 as pb
from shared.stubs.cascade.ingest.v1 import ingest_pb2_grpc
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


async def test_fetch_dataset_streams_and_verifies_a_version(tmp_path: Path) -> None:
    async def emit(event: DataArrived) -> None:
        pass

    wine = load_wine(as_frame=True).frame
    servicer = IngestServicer(IngestCore(IngestStore(tmp_path), emit), max_upload_bytes=10_000_000)
    register = lambda s: ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, s)  # noqa: E731
    async with serving(register) as address, open_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        await stub.UploadBatch(iter(_upload("wine", wine.to_csv(index=False).encode())))
        info, frame = await fetch_dataset(channel, "wine")
    assert len(frame) == info.rows == len(wine)
    assert frame.drop(columns="target").to_numpy().tolist() == wine.drop(columns="target").to_numpy().tolist()
