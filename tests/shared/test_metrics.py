from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from cascade.events import DataArrived
from cascade.metrics import GrpcMetricsInterceptor
from cascade.service import GRPC_OPTIONS
from cascade.services.ingest.core import IngestCore
from cascade.services.ingest.grpc_api import IngestServicer
from cascade.services.ingest.store import IngestStore
from cascade.stubs.cascade.ingest.v1 import ingest_pb2 as pb
from cascade.stubs.cascade.ingest.v1 import ingest_pb2_grpc

SERVICE = "cascade.ingest.v1.IngestService"


def _handled(method: str, rpc_type: str, code: str) -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": rpc_type, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


@pytest.fixture
async def ingest(tmp_path: Path) -> AsyncIterator[ingest_pb2_grpc.IngestServiceAsyncStub]:
    async def emit(event: DataArrived) -> None:
        pass

    servicer = IngestServicer(IngestCore(IngestStore(tmp_path), emit), max_upload_bytes=1000)
    server = grpc.aio.server(interceptors=[GrpcMetricsInterceptor()], options=GRPC_OPTIONS)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)
    await server.stop(None)


async def test_rpcs_are_counted_by_method_type_and_status_code(
    ingest: ingest_pb2_grpc.IngestServiceAsyncStub,
) -> None:
    not_found = _handled("GetDatasetVersion", "unary_unary", "NOT_FOUND")
    stream_not_found = _handled("DownloadDatasetVersion", "unary_stream", "NOT_FOUND")
    for _ in range(2):  # each method is wrapped once; every call is still counted
        with pytest.raises(grpc.aio.AioRpcError):
            await ingest.GetDatasetVersion(pb.GetDatasetVersionRequest(dataset="missing"))
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in ingest.DownloadDatasetVersion(pb.DownloadDatasetVersionRequest(dataset="missing")):
            pass
    assert _handled("GetDatasetVersion", "unary_unary", "NOT_FOUND") == not_found + 2
    assert _handled("DownloadDatasetVersion", "unary_stream", "NOT_FOUND") == stream_not_found + 1
    seconds = REGISTRY.get_sample_value(
        "grpc_server_handling_seconds_count",
        {"grpc_service": SERVICE, "grpc_method": "GetDatasetVersion", "grpc_type": "unary_unary"},
    )
    assert seconds is not None and seconds >= 2
