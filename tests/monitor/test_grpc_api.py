from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from cascade.services.monitor.core import MonitorCore
from cascade.services.monitor.drift import FeatureDrift
from cascade.services.monitor.grpc_api import SERVICE_NAME, MonitorServicer
from cascade.services.monitor.store import DriftReport, MonitorStore
from cascade.stubs.cascade.monitor.v1 import monitor_pb2 as pb
from cascade.stubs.cascade.monitor.v1 import monitor_pb2_grpc

REPORT = DriftReport(
    model="churn",
    model_version=4,
    reference_dataset="customers",
    reference_dataset_version="abc123",
    window_size=200,
    features=(
        FeatureDrift("alpha", "ks", 0.41, 1e-9, 0.05, True),
        FeatureDrift("beta", "ks", 0.05, 0.7, 0.05, False),
    ),
    dataset_drifted=True,
    computed_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    predictions_seen=1234,
)


class NoSource:
    async def fetch(self, model: str, model_version: int) -> None:
        raise AssertionError("GetDriftReport never fetches reference data")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MonitorStore]:
    store = MonitorStore(tmp_path)
    store.save_report(REPORT)
    yield store
    store.close()


@pytest.fixture
async def stub(store: MonitorStore) -> AsyncIterator[monitor_pb2_grpc.MonitorServiceStub]:
    core = MonitorCore(store, NoSource(), window_size=200, evaluate_every=50, p_value_threshold=0.05)  # type: ignore[arg-type]
    server = grpc.aio.server()
    monitor_pb2_grpc.add_MonitorServiceServicer_to_server(MonitorServicer(core), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield monitor_pb2_grpc.MonitorServiceStub(channel)
    await server.stop(None)


async def test_returns_the_latest_report(stub: monitor_pb2_grpc.MonitorServiceStub) -> None:
    report = await stub.GetDriftReport(pb.GetDriftReportRequest(model="churn"))

    assert (report.model, report.model_version, report.reference_dataset_version) == ("churn", 4, "abc123")
    assert (report.window_size, report.predictions_seen, report.dataset_drifted) == (200, 1234, True)
    assert report.computed_at.ToDatetime(tzinfo=UTC) == REPORT.computed_at
    assert [(f.feature, f.test, f.drifted) for f in report.features] == [
        ("alpha", "ks", True),
        ("beta", "ks", False),
    ]
    assert report.features[0].statistic == 0.41
    assert report.features[0].p_value == 1e-9
    assert report.features[1].threshold == 0.05


async def test_unknown_model_is_not_found(stub: monitor_pb2_grpc.MonitorServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetDriftReport(pb.GetDriftReportRequest(model="nobody"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no drift report for model 'nobody'" in (raised.value.details() or "")


async def test_empty_model_is_an_invalid_argument(stub: monitor_pb2_grpc.MonitorServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetDriftReport(pb.GetDriftReportRequest(model=""))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_service_name_is_the_full_proto_name() -> None:
    assert SERVICE_NAME == "cascade.monitor.v1.MonitorService"
