"""TrainerClient and MonitorClient against fake services over real gRPC on loopback: plain values
in, records out, and a status becomes the Cascade error naming the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cascade.client.calls import RemoteService
from cascade.client.channels import open_channel
from cascade.client.monitor import MonitorClient
from cascade.client.trainer import TrainerClient
from cascade.errors import InvalidArgument, NotFound
from cascade.stubs.cascade.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from cascade.stubs.cascade.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from tests.grpc_server import serving


class FakeTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self) -> None:
        self.imported: list[tuple[trainer_pb2.ImportHeader, bytes]] = []

    async def RequestTraining(self, request: Any, context: Any) -> trainer_pb2.RequestTrainingResponse:
        return trainer_pb2.RequestTrainingResponse(request_id=f"{request.model}:{request.actor}")

    async def ImportModel(self, requests: Any, context: Any) -> trainer_pb2.ImportModelResponse:
        header, data = None, b""
        async for message in requests:
            if message.HasField("header"):
                header = message.header
            else:
                data += message.chunk
        assert header is not None
        self.imported.append((header, data))
        monitored = bool(header.dataset)
        return trainer_pb2.ImportModelResponse(model_version=4, parity_rows=10, monitored=monitored)


class FakeMonitor(monitor_pb2_grpc.MonitorServiceServicer):
    async def GetDriftReport(self, request: Any, context: Any) -> monitor_pb2.DriftReport:
        if request.model != "cancer":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no report for {request.model}")
        return monitor_pb2.DriftReport(
            model="cancer",
            model_version=2,
            features=[monitor_pb2.FeatureDrift(feature="radius", test="ks", p_value=0.001, drifted=True)],
            dataset_drifted=True,
        )

    async def GetDriftHistory(self, request: Any, context: Any) -> monitor_pb2.DriftHistory:
        verdict = monitor_pb2.Verdict(model_version=2, dataset_drifted=True, drifted_features=["radius"])
        return monitor_pb2.DriftHistory(model=request.model, verdicts=[verdict])


@pytest.fixture
async def trainer() -> AsyncIterator[tuple[TrainerClient, FakeTrainer]]:
    fake = FakeTrainer()
    add = trainer_pb2_grpc.add_TrainerServiceServicer_to_server
    async with serving(lambda server: add(fake, server)) as at:
        client = TrainerClient(RemoteService("trainer", open_channel(at), at), timeout=10)
        yield client, fake
        await client.close()


@pytest.fixture
async def monitor() -> AsyncIterator[MonitorClient]:
    fake = FakeMonitor()
    add = monitor_pb2_grpc.add_MonitorServiceServicer_to_server
    async with (
        serving(lambda server: add(fake, server)) as at,
        MonitorClient.connect(at, timeout=10) as client,
    ):
        yield client


async def test_training_is_requested_and_a_file_is_imported_in_chunks(
    trainer: tuple[TrainerClient, FakeTrainer], tmp_path: Path
) -> None:
    client, fake = trainer
    assert await client.request_training("cancer", actor="ana") == "cancer:ana"
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x" * (3 * 1024 * 1024 + 5))  # several chunks

    result = await client.import_model(
        "cancer", model, format="onnx", features=["a", "b"], task="classification", dataset="cancer"
    )

    assert (result.model_version, result.parity_rows, result.monitored) == (4, 10, True)
    header, data = fake.imported[0]
    assert (header.model, header.format, list(header.features)) == ("cancer", 1, ["a", "b"])
    assert data == model.read_bytes()


async def test_a_missing_file_or_unknown_format_is_refused_before_any_call(
    trainer: tuple[TrainerClient, FakeTrainer], tmp_path: Path
) -> None:
    client, fake = trainer
    with pytest.raises(InvalidArgument, match="no such file"):
        await client.import_model(
            "m", tmp_path / "absent.onnx", format="onnx", features=["a"], task="regression"
        )
    with pytest.raises(InvalidArgument, match="unknown model format"):
        await client.import_model("m", tmp_path, format="pmml", features=["a"], task="regression")  # type: ignore[arg-type]
    assert fake.imported == []


async def test_drift_report_and_history_are_records_and_not_found_names_the_monitor(
    monitor: MonitorClient,
) -> None:
    report = await monitor.drift_report("cancer")
    assert (report.model_version, report.dataset_drifted, report.drifted_features) == (2, True, ["radius"])
    history = await monitor.drift_history("cancer")
    assert [(v.model_version, v.drifted_features) for v in history.verdicts] == [(2, ("radius",))]
    assert history.verdicts[0].computed_at is None
    with pytest.raises(NotFound, match=r"monitor at .*: reading the drift report of other"):
        await monitor.drift_report("other")
