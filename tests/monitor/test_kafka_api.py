"""The whole service as `build()` wires it, with Kafka replaced by FastStream's in-memory
TestKafkaBroker, the registry and ingest by loopback fakes, and gRPC for real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cascade.errors import Unavailable
from cascade.events import DriftDetected, Event, LabelsArrived, ModelPromoted, PredictionLogged, Topics
from cascade.messaging import DLQ_REASON, publish_event
from cascade.service import Service
from cascade.services.monitor.app import build
from cascade.services.monitor.grpc_api import SERVICE_NAME
from cascade.services.monitor.settings import MonitorSettings
from cascade.stubs.cascade.monitor.v1 import monitor_pb2 as pb
from cascade.stubs.cascade.monitor.v1 import monitor_pb2_grpc

from .support import DATASET_VERSION, FEATURES, MODEL, Dependencies, normal_rows

EVERY = 20


@dataclass
class Running:
    service: Service
    broker: KafkaBroker
    topics: Topics
    monitor: monitor_pb2_grpc.MonitorServiceStub
    dead_letters: list[str] = field(default_factory=list)  # their reasons

    async def publish(self, event: Event) -> None:
        await publish_event(self.broker, self.topics, event)


def settings_for(tmp_path: Path, registry: str, ingest: str) -> MonitorSettings:
    return MonitorSettings(
        data_dir=tmp_path,
        grpc_port=0,
        metrics_port=0,
        topic_prefix=f"test-{uuid.uuid4().hex[:12]}",
        registry_address=registry,
        ingest_address=ingest,
        window_size=2 * EVERY,
        evaluate_every=EVERY,
        retry_backoff_seconds=0.0,
    )


@contextlib.asynccontextmanager
async def running(settings: MonitorSettings) -> AsyncIterator[Running]:
    service = build(settings)
    assert service.broker is not None
    topics = Topics(settings.topic_prefix)
    dead_letters: list[str] = []

    @service.broker.subscriber(topics.dead_letter)
    async def on_dead_letter(message: KafkaMessage) -> None:
        dead_letters.append(message.headers[DLQ_REASON])

    stop = asyncio.Event()
    async with TestKafkaBroker(service.broker) as broker:
        task = asyncio.create_task(service.run(stop))
        try:
            async with grpc.aio.insecure_channel(await serving_address(service)) as channel:
                stub = monitor_pb2_grpc.MonitorServiceStub(channel)
                yield Running(service, broker, topics, stub, dead_letters)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):  # Service.run installed them on the test loop
                loop.remove_signal_handler(sig)


async def serving_address(service: Service) -> str:
    """Wait until the service reports SERVING for MonitorService, as a readiness probe would."""
    async with asyncio.timeout(10):
        while True:
            address = f"{service.settings.grpc_host}:{service.bound_port}"
            if service.bound_port and await is_serving(address):
                return address
            await asyncio.sleep(0.01)


async def is_serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def promoted(version: int = 1, alias: str = "champion") -> ModelPromoted:
    return ModelPromoted(
        source="test", subject=MODEL, model=MODEL, model_version=version, alias=alias, actor="test"
    )


def predictions(rows: np.ndarray, features: list[str] = FEATURES) -> PredictionLogged:
    return PredictionLogged(
        source="test",
        subject=MODEL,
        model=MODEL,
        model_version=1,
        request_id=str(uuid.uuid4()),
        features=features,
        inputs=rows.tolist(),
        outputs=[0.0] * len(rows),
    )


async def drift_report(monitor: monitor_pb2_grpc.MonitorServiceStub) -> pb.DriftReport:
    report: pb.DriftReport = await monitor.GetDriftReport(pb.GetDriftReportRequest(model=MODEL))
    return report


async def test_promotion_and_predictions_make_a_report(tmp_path: Path, dependencies: Dependencies) -> None:
    async with running(settings_for(tmp_path, dependencies.address, dependencies.address)) as app:
        # Predictions may come first: they fill the window, with no report yet.
        await app.publish(predictions(normal_rows(EVERY + 10, shift=2.0, seed=7)))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await drift_report(app.monitor)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

        await app.publish(promoted())  # the reference arrives and the due evaluation runs

        report = await drift_report(app.monitor)
        assert (report.model, report.model_version) == (MODEL, 1)
        assert report.reference_dataset_version == DATASET_VERSION
        assert (report.window_size, report.predictions_seen) == (EVERY + 10, EVERY + 10)
        assert report.dataset_drifted
        assert [feature.feature for feature in report.features] == FEATURES

        await app.publish(predictions(normal_rows(EVERY, seed=8)))
        assert (await drift_report(app.monitor)).predictions_seen == 2 * EVERY + 10
        assert app.dead_letters == []


async def test_repeated_and_non_champion_promotions_change_nothing(
    tmp_path: Path, dependencies: Dependencies
) -> None:
    async with running(settings_for(tmp_path, dependencies.address, dependencies.address)) as app:
        await app.publish(promoted())
        await app.publish(promoted())
        await app.publish(promoted(version=1, alias="canary"))

        assert dependencies.registry.calls == 1
        assert app.dead_letters == []


async def test_rows_of_the_wrong_width_are_dead_lettered(tmp_path: Path, dependencies: Dependencies) -> None:
    async with running(settings_for(tmp_path, dependencies.address, dependencies.address)) as app:
        await app.publish(promoted())
        await app.publish(predictions(np.ones((3, 2)), features=["alpha", "beta"]))

        assert len(app.dead_letters) == 1
        assert app.dead_letters[0].startswith("InvalidArgument")
        assert "reference" in app.dead_letters[0]


async def test_an_unreachable_registry_is_retried_not_dead_lettered(
    tmp_path: Path, dependencies: Dependencies
) -> None:
    nowhere = dependencies.address.rsplit(":", 1)[0] + ":1"  # port 1: nothing listens there
    async with running(settings_for(tmp_path, nowhere, dependencies.address)) as app:
        with pytest.raises(Unavailable):  # in memory, the redelivery shows as the error itself
            await app.publish(promoted())

        assert app.dead_letters == []


async def test_drift_emits_drift_detected_and_labels_arrive_as_plain_json(
    tmp_path: Path, dependencies: Dependencies
) -> None:
    settings = settings_for(tmp_path, dependencies.address, dependencies.address).model_copy(
        update={"trigger_after": 1, "min_labels": 5}
    )
    async with running(settings) as app:
        detected: list[DriftDetected] = []

        @app.broker.subscriber(app.topics.for_event(DriftDetected))
        async def on_drift(event: DriftDetected) -> None:
            detected.append(event)

        await app.broker.start()  # the subscriber was added after the broker started
        await app.publish(promoted())
        logged = predictions(normal_rows(EVERY, shift=3.0, seed=7))
        await app.publish(logged)
        assert [event.model for event in detected] == [MODEL] and detected[0].kind == "drift"

        # Labels from any producer: plain JSON, no envelope, on the labels topic.
        labels = {"model": MODEL, "request_id": logged.request_id, "labels": [0.0] * EVERY}
        await app.broker.publish(json.dumps(labels).encode(), app.topics.for_event(LabelsArrived))
        report = await drift_report(app.monitor)
        assert report.performance.labelled_rows == EVERY and report.performance.value == 1.0

        history = await app.monitor.GetDriftHistory(pb.GetDriftHistoryRequest(model=MODEL))
        assert [event.event_id for event in history.drift_events] == [detected[0].id]
        assert history.verdicts[0].dataset_drifted
        assert app.dead_letters == []
