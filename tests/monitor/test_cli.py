"""`cascade monitor MODEL`: the table it prints, from a real MonitorService over loopback gRPC."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from pathlib import Path

import grpc
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.services.monitor.drift import FeatureDrift
from cascade.services.monitor.grpc_api import MonitorServicer
from cascade.services.monitor.store import DriftReport, MonitorStore, Performance
from cascade.stubs.cascade.monitor.v1 import monitor_pb2_grpc


class _Core:
    """Stands in for MonitorCore's read side, backed by a real store."""

    def __init__(self, store: MonitorStore) -> None:
        self.store = store

    def latest_report(self, model: str) -> DriftReport:
        report = self.store.latest_report(model)
        assert report is not None
        return report

    def history(self, model: str, limit: int = 100) -> tuple[list[object], list[object]]:
        return list(self.store.verdicts(model, limit)), list(self.store.drift_events(model, limit))


def _report() -> DriftReport:
    return DriftReport(
        model="churn",
        model_version=3,
        reference_dataset="customers",
        reference_dataset_version="abcdef0123456789",
        window_size=200,
        features=(
            FeatureDrift("tenure", "ks", 0.41, 1e-9, 0.05, True),
            FeatureDrift("plan", "jensenshannon", 0.02, math.nan, 0.1, False),
        ),
        dataset_drifted=True,
        computed_at=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        predictions_seen=1234,
        prediction=FeatureDrift("prediction", "z", 1.2, 0.23, 0.05, False),
        reference_rows=800,
        performance=Performance(
            "accuracy", 0.81, 120, 0.93, 0.1, True, None, "unavailable: no probabilities"
        ),
    )


async def test_the_table_names_each_feature_with_its_test_statistic_threshold_and_verdict(
    tmp_path: Path,
) -> None:
    store = MonitorStore(tmp_path)
    store.save_report(_report())
    store.save_drift_event(
        "churn", "ev-1", "drift", 3, "1 of 2 features drifted", datetime.now(UTC), triggered="none: cooldown"
    )
    server = grpc.aio.server()
    monitor_pb2_grpc.add_MonitorServiceServicer_to_server(MonitorServicer(_Core(store)), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["--home", str(tmp_path), "monitor", "churn", "--address", f"127.0.0.1:{port}"],
        )
    finally:
        await server.stop(None)
        store.close()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "dataset: DRIFTED (1 of 2 features drifted)" in lines
    header = next(line for line in lines if line.startswith("feature"))
    assert header.split() == ["feature", "test", "statistic", "p-value", "threshold", "drifted"]
    assert next(line for line in lines if line.startswith("tenure")).split() == [
        "tenure",
        "ks",
        "0.41",
        "1e-09",
        "0.05",
        "YES",
    ]
    assert next(line for line in lines if line.startswith("plan")).split() == [
        "plan",
        "jensenshannon",
        "0.02",
        "-",
        "0.1",
        "no",
    ]
    assert next(line for line in lines if line.startswith("prediction")).split()[1] == "z"
    assert any(
        "accuracy 0.8100 on 120 labelled rows vs 0.9300 at validation - DECAYED" in line for line in lines
    )
    [event] = [index for index, line in enumerate(lines) if "ev-1" in line]
    assert "drift on v3  emitted" in lines[event] and lines[event + 1].split() == [
        "triggered:",
        "none:",
        "cooldown",
    ]


def test_an_unreachable_monitor_is_one_line_and_exit_code_4(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["--home", str(tmp_path), "monitor", "churn", "--address", "127.0.0.1:1"]
    )
    assert result.exit_code == 4  # EXIT_UNAVAILABLE
    assert "Error: cannot reach monitor at 127.0.0.1:1" in result.output
