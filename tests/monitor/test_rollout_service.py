"""The rollout policy inside the whole monitor as `build()` wires it: Kafka in FastStream's memory,
the registry a loopback gRPC fake of the rollout RPCs (reached through the real RegistryClient),
GetLiveComparison over real gRPC. Serving's events move a good challenger's step on and roll a bad
one back with its cause; a restarted monitor shows the step's evidence it had gathered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from cascade.client.monitor import MonitorClient
from cascade.client.records import RolloutThresholds
from cascade.events import LiveTrafficReported, ModelTrafficChanged, PredictionsCompared, VersionLiveStats
from cascade.services.monitor.settings import MonitorSettings
from cascade.services.monitor.store import MonitorStore
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc

from .rollout_support import histogram
from .test_kafka_api import running, settings_for

MODEL = "churn"
# The registry's default thresholds (0 would turn one off), a plan of two steps.
STEPS = (
    pb.RolloutStep(stage=pb.ROLLOUT_STAGE_SHADOW, percent=100, min_requests=100, min_seconds=0),
    pb.RolloutStep(stage=pb.ROLLOUT_STAGE_CANARY, percent=50, min_requests=100, min_seconds=0),
)


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp


class RolloutRegistry(registry_pb2_grpc.RegistryServiceServicer):  # type: ignore[misc]
    """The registry's rollout RPCs over one model, v1 champion, v2 rolled out through STEPS."""

    def __init__(self) -> None:
        self.traffic = pb.Traffic(
            model=MODEL, champion_version=1, shadow_version=2, shadow_percent=100, revision=1
        )
        self.traffic.rollout.CopyFrom(
            pb.Rollout(
                version=2,
                state=pb.ROLLOUT_STATE_RUNNING,
                step=0,
                started_at=_now(),
                step_started_at=_now(),
                plan=pb.RolloutPlan(model=MODEL, steps=STEPS, thresholds=RolloutThresholds().proto),
            )
        )
        self.calls: list[tuple[str, str]] = []  # (rpc, reason)

    async def GetTraffic(
        self, request: pb.GetTrafficRequest, context: grpc.aio.ServicerContext
    ) -> pb.Traffic:
        return self.traffic

    async def GetModelVersion(self, request: object, context: grpc.aio.ServicerContext) -> pb.ModelVersion:
        return pb.ModelVersion(model=MODEL, version=1, tags={"task": "classification"})

    async def AdvanceRollout(
        self, request: pb.AdvanceRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.Traffic:
        self.calls.append(("advance", request.reason))
        rollout = self.traffic.rollout
        if request.from_step != rollout.step:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "moved meanwhile")
        rollout.step += 1
        rollout.step_started_at.CopyFrom(_now())
        self.traffic.revision += 1
        self.traffic.shadow_version, self.traffic.shadow_percent = 0, 0
        self.traffic.canary_version, self.traffic.canary_percent = 2, 50
        return self.traffic

    async def AbortRollout(
        self, request: pb.AbortRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.Traffic:
        self.calls.append(("abort", request.reason))
        self.traffic.rollout.state = pb.ROLLOUT_STATE_ROLLED_BACK
        self.traffic.rollout.cause = request.reason
        self.traffic.revision += 1
        self.traffic.canary_version, self.traffic.canary_percent = 0, 0
        return self.traffic


@pytest.fixture
async def registry() -> AsyncIterator[tuple[RolloutRegistry, str]]:
    servicer = RolloutRegistry()
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


def changed(registry: RolloutRegistry) -> ModelTrafficChanged:
    return ModelTrafficChanged(
        source="cascade/registry",
        subject=MODEL,
        model=MODEL,
        revision=registry.traffic.revision,
        action="rollout_started",
        rollout_version=2,
        rollout_step=registry.traffic.rollout.step,
        actor="test",
    )


def served(
    registry: RolloutRegistry, requests: int, challenger_label: Callable[[int], float]
) -> list[object]:
    """What serving reports of `requests` requests in the current step: live stats and compared rows."""
    stage = "shadow" if registry.traffic.rollout.step == 0 else "canary"
    live = LiveTrafficReported(
        source="cascade/serving",
        subject=MODEL,
        model=MODEL,
        instance="serving-0",
        traffic_revision=registry.traffic.revision,
        interval_seconds=2,
        versions=[
            VersionLiveStats(
                version=1,
                role="champion",
                requests=requests,
                failures=0,
                latency_buckets=histogram([3.0] * requests),
            ),
            VersionLiveStats(
                version=2,
                role=stage,
                requests=requests,
                failures=0,
                latency_buckets=histogram([3.0] * requests),
            ),
        ],
    )
    rows = PredictionsCompared(
        source="cascade/serving",
        subject=MODEL,
        model=MODEL,
        instance="serving-0",
        champion_version=1,
        challenger_version=2,
        challenger_role=stage,
        request_ids=[f"r{i}" for i in range(requests)],
        champion_outputs=[float(i % 2) for i in range(requests)],
        challenger_outputs=[challenger_label(i) for i in range(requests)],
    )
    return [live, rows]


async def eventually(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):  # 10 s
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def saved_requests(root: Path) -> int:
    """The challenger requests of the step the monitor's store holds (0 before it holds one)."""
    store = MonitorStore(root)
    try:
        record = store.rollout_step(MODEL)
    finally:
        store.close()
    return 0 if record is None else int(json.loads(record.evidence_json)["evidence"]["challenger_requests"])


def settings(tmp_path: Path, registry_address: str) -> MonitorSettings:
    base = settings_for(tmp_path, registry_address, registry_address)
    return base.model_copy(update={"rollout_tick_seconds": 0.05})


async def test_a_good_challenger_moves_on_and_a_bad_one_is_rolled_back_with_its_cause(
    tmp_path: Path, registry: tuple[RolloutRegistry, str]
) -> None:
    fake, address = registry
    async with running(settings(tmp_path, address)) as app:
        await app.publish(changed(fake))
        for event in served(fake, 150, lambda i: float(i % 2)):  # the same labels: agreement 1.0
            await app.publish(event)  # type: ignore[arg-type]
        await eventually(lambda: fake.traffic.rollout.step == 1, "the step to advance")
        assert fake.calls[0][0] == "advance"
        assert fake.calls[0][1].startswith("step 1 of 2 (shadow 100%) passed")

        for event in served(fake, 150, lambda i: 1.0):  # a constant canary: agreement 0.5
            await app.publish(event)  # type: ignore[arg-type]
        await eventually(lambda: fake.traffic.rollout.state == pb.ROLLOUT_STATE_ROLLED_BACK, "the rollback")
        assert fake.calls[-1] == ("abort", fake.traffic.rollout.cause)
        cause = fake.traffic.rollout.cause
        assert cause.startswith("agreement 0.50 < 0.90 over 150 compared rows; prediction drift (PSI) 4.6")
        assert cause.endswith("at step 2 of 2 (canary 50%)")

        port = app.service.bound_port
        async with MonitorClient.connect(f"127.0.0.1:{port}", timeout=10) as monitor:
            comparison = await monitor.get_live_comparison(MODEL)
        assert (comparison.verdict, comparison.stage, comparison.step) == ("rolled_back", "canary", 1)
        assert (comparison.compared_rows, comparison.agreement) == (150, 0.5)
        assert comparison.detail == fake.traffic.rollout.cause


async def test_a_restarted_monitor_shows_the_evidence_it_had(
    tmp_path: Path, registry: tuple[RolloutRegistry, str]
) -> None:
    fake, address = registry
    async with running(settings(tmp_path, address)) as app:
        await app.publish(changed(fake))
        for event in served(fake, 60, lambda i: float(i % 2)):  # short of 100 requests: it holds
            await app.publish(event)  # type: ignore[arg-type]
        await eventually(lambda: saved_requests(tmp_path) == 60, "a tick to keep the evidence")
        async with MonitorClient.connect(f"127.0.0.1:{app.service.bound_port}", timeout=10) as monitor:
            before = await monitor.get_live_comparison(MODEL)
    assert before.challenger_requests == 60 and before.verdict == "holding"

    async with (
        running(settings(tmp_path, address)) as app,
        MonitorClient.connect(f"127.0.0.1:{app.service.bound_port}", timeout=10) as monitor,
    ):
        after = await monitor.get_live_comparison(MODEL)
    assert (after.challenger_requests, after.compared_rows, after.agreement) == (60, 60, 1.0)
    assert after.verdict == "holding" and "60 of 100 requests" in after.detail
    assert fake.calls == []
