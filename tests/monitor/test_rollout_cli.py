"""`cascade monitor MODEL` during a rollout: after the drift report, the challenger against the
champion on live traffic and the monitor's verdict, read from a real MonitorService over loopback
gRPC; nothing of it for a model without a rollout."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.services.monitor.grpc_api import MonitorServicer
from cascade.services.monitor.rollout import RolloutPolicy
from cascade.services.monitor.store import MonitorStore
from cascade.stubs.cascade.monitor.v1 import monitor_pb2_grpc

from .rollout_support import MODEL, START, Clock, FakeRegistry, compared, live_traffic
from .test_cli import _Core, _report


async def classification(model: str, version: int) -> str:
    return "classification"


async def run_monitor_command(tmp_path: Path, policy: RolloutPolicy, store: MonitorStore, model: str) -> str:
    server = grpc.aio.server()
    monitor_pb2_grpc.add_MonitorServiceServicer_to_server(MonitorServicer(_Core(store), policy), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["--home", str(tmp_path), "monitor", model, "--address", f"127.0.0.1:{port}", "--history", "0"],
        )
    finally:
        await server.stop(None)
    assert result.exit_code == 0, result.output
    return result.output


async def test_the_live_comparison_follows_the_report_during_a_rollout(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path)
    store.save_report(_report())  # of "churn", which has no rollout
    store.save_report(replace(_report(), model=MODEL))
    clock = Clock()
    registry = FakeRegistry(clock)
    policy = RolloutPolicy(store, registry, classification, clock=clock)
    rollout = registry.start()
    await policy.refresh(MODEL)
    champion = [float(i % 2) for i in range(120)]
    await policy.on_live_traffic(live_traffic(rollout, START, [3.0] * 120, [3.0] * 119, 1))
    await policy.on_compared(compared(rollout, START, [f"r{i}" for i in range(120)], champion, champion))
    clock.advance(4)
    await policy.tick()
    try:
        during = await run_monitor_command(tmp_path, policy, store, MODEL)
        without = await run_monitor_command(tmp_path, policy, store, "churn")
    finally:
        store.close()

    lines = during.splitlines()
    assert "live comparison: v2 (shadow, step 1, since 2026-12-01 12:00:00) against champion v1" in lines
    verdict = next(line for line in lines if line.startswith("  verdict:"))
    assert verdict.startswith(
        "  verdict: holding: step 1 of 3 (shadow 100%) holds: 120 of 200 requests, 4 of 10 s"
    )
    assert (
        "  challenger: 120 requests, 1 failed (0.8333%), p99 3.98 ms against the champion's 3.98 ms" in lines
    )
    assert "  compared rows: 120, agreement 1, prediction drift (PSI) 0" in lines
    assert "live comparison" not in without
