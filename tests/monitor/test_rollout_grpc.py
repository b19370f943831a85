"""GetLiveComparison over real gRPC, read with the typed MonitorClient: the step's figures and the
policy's verdict; NOT_FOUND for a model with no rollout on record, INVALID_ARGUMENT without a name."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cascade.client.monitor import MonitorClient
from cascade.errors import InvalidArgument, NotFound
from cascade.services.monitor.core import MonitorCore
from cascade.services.monitor.grpc_api import MonitorServicer
from cascade.services.monitor.rollout import RolloutPolicy
from cascade.services.monitor.store import MonitorStore
from cascade.stubs.cascade.monitor.v1 import monitor_pb2_grpc

from .rollout_support import MODEL, START, Clock, FakeRegistry, compared, live_traffic


class NoSource:
    async def fetch(self, model: str, model_version: int) -> None:
        raise AssertionError("GetLiveComparison never fetches reference data")


async def classification(model: str, version: int) -> str:
    return "classification"


@dataclass
class Served:
    client: MonitorClient
    policy: RolloutPolicy
    registry: FakeRegistry
    clock: Clock


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = MonitorStore(tmp_path)
    clock = Clock()
    registry = FakeRegistry(clock)
    policy = RolloutPolicy(store, registry, classification, clock=clock)
    core = MonitorCore(store, NoSource(), window_size=200, evaluate_every=50, p_value_threshold=0.05)  # type: ignore[arg-type]
    server = grpc.aio.server()
    monitor_pb2_grpc.add_MonitorServiceServicer_to_server(MonitorServicer(core, policy), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with MonitorClient.connect(f"127.0.0.1:{port}", timeout=10) as client:
        yield Served(client, policy, registry, clock)
    await server.stop(None)
    store.close()


async def test_the_live_comparison_carries_the_steps_figures_and_verdict(served: Served) -> None:
    rollout = served.registry.start()
    await served.policy.refresh(MODEL)
    champion = [float(i % 2) for i in range(150)]
    challenger = [c if i < 120 else 1 - c for i, c in enumerate(champion)]  # 0.8 agreement
    await served.policy.on_live_traffic(live_traffic(rollout, START, [3.0] * 150, [15.0] * 148, 2))
    await served.policy.on_compared(
        compared(rollout, START, [f"r{i}" for i in range(150)], champion, challenger)
    )
    served.clock.advance(4)

    holding = await served.client.get_live_comparison(MODEL)
    await served.policy.tick()
    ended = await served.client.get_live_comparison(MODEL)

    assert (holding.model, holding.champion_version, holding.challenger_version) == (MODEL, 1, 2)
    assert (holding.stage, holding.step, holding.step_started_at) == ("shadow", 0, START)
    assert (holding.challenger_requests, holding.challenger_failures) == (150, 2)
    assert holding.challenger_error_rate == pytest.approx(2 / 150)
    assert holding.challenger_p99_ms > 4 * holding.champion_p99_ms
    assert (holding.compared_rows, holding.agreement) == (150, pytest.approx(0.8))
    assert math.isnan(holding.difference_ratio) and math.isnan(holding.champion_metric)
    assert holding.verdict == "holding"
    assert ended.verdict == "rolled_back"
    assert ended.detail.startswith("p99 latency 15.9 ms")
    assert "agreement 0.80 < 0.90 over 150 compared rows" in ended.detail
    assert ended.detail == served.registry.rollouts[MODEL].cause


async def test_a_model_without_rollout_is_not_found_and_no_name_is_invalid(served: Served) -> None:
    with pytest.raises(NotFound, match="no challenger on live traffic"):
        await served.client.get_live_comparison("nobody")
    with pytest.raises(InvalidArgument):
        await served.client.get_live_comparison("")
