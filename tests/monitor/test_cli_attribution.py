"""Drift explained, as people read it: `cascade monitor MODEL` and the SDK's report, from a real
MonitorService over loopback gRPC."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.client.monitor import MonitorClient
from cascade.client.records import DriftReport
from cascade.services.monitor.attribution import AttributionShift
from cascade.services.monitor.grpc_api import MonitorServicer
from cascade.services.monitor.store import MonitorStore
from cascade.stubs.cascade.monitor.v1 import monitor_pb2_grpc
from tests.monitor.test_cli import _Core, _report

SHIFTS = (AttributionShift("tenure", 0.12, 0.47), AttributionShift("plan", 0.30, 0.18))
NOTE = "tree Shapley attributions (margin space) of the champion's ONNX on 100 reference rows"


async def _serve(store: MonitorStore, command: list[str], tmp_path: Path) -> tuple[str, int, DriftReport]:
    server = grpc.aio.server()
    monitor_pb2_grpc.add_MonitorServiceServicer_to_server(MonitorServicer(_Core(store)), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["--home", str(tmp_path), *command, "--address", f"127.0.0.1:{port}"],
        )
        client = MonitorClient.connect(f"127.0.0.1:{port}")
        try:
            report = await client.drift_report("churn")
        finally:
            await client.close()
    finally:
        await server.stop(None)
    return result.output, result.exit_code, report


async def test_the_report_lists_the_attribution_shift_largest_move_first(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path)
    store.save_report(dataclasses.replace(_report(), attribution_shift=SHIFTS, attribution_note=NOTE))
    try:
        output, code, report = await _serve(store, ["monitor", "churn"], tmp_path)
    finally:
        store.close()
    assert code == 0, output
    lines = output.splitlines()
    start = lines.index("drift explained: share of the champion's |attribution|, largest moves first")
    assert lines[start + 1].split() == ["feature", "reference", "window", "moved"]
    assert lines[start + 2].split() == ["tenure", "12.0%", "47.0%", "+35.0%"]
    assert lines[start + 3].split() == ["plan", "30.0%", "18.0%", "-12.0%"]
    assert lines[start + 4] == f"({NOTE})"
    assert [(s.feature, s.reference_share, s.window_share) for s in report.attribution_shift] == [
        ("tenure", 0.12, 0.47),
        ("plan", 0.30, 0.18),
    ]
    assert report.attribution_note == NOTE


async def test_a_drift_that_could_not_be_explained_says_why(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path)
    why = "not explained: ExplainError: needs 120000 evaluations, budget 50000"
    store.save_report(dataclasses.replace(_report(), attribution_note=why))
    try:
        output, code, _ = await _serve(store, ["monitor", "churn"], tmp_path)
    finally:
        store.close()
    assert code == 0, output
    assert f"drift explained: {why}" in output.splitlines()


async def test_a_report_without_drift_explained_prints_no_such_section(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path)
    store.save_report(_report())
    try:
        output, code, report = await _serve(store, ["monitor", "churn"], tmp_path)
    finally:
        store.close()
    assert code == 0, output
    assert "drift explained" not in output
    assert report.attribution_shift == ()
