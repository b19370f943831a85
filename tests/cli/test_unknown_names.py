"""Unknown models and datasets end every verb with exit code 3 and one line on stderr, against a
real registry and ingest over loopback; an unreachable service is exit code 4."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade.cli.errors import EXIT_NOT_FOUND, EXIT_UNAVAILABLE
from cascade.cli.main import app
from cascade.events import DataArrived
from cascade.services.ingest.core import IngestCore
from cascade.services.ingest.grpc_api import IngestServicer
from cascade.services.ingest.store import IngestStore
from cascade.stack import DEFAULT_METRICS_PORTS, SERVICES
from cascade.stubs.cascade.ingest.v1 import ingest_pb2_grpc
from tests.cli.test_models import _registry
from tests.grpc_server import serving


@pytest.fixture
async def home(tmp_path: Path) -> AsyncIterator[Path]:
    """A stack home whose registry and ingest run in this process; the other services are down."""

    async def emit(event: DataArrived) -> None:
        pass

    ingest = IngestServicer(IngestCore(IngestStore(tmp_path / "store"), emit), max_upload_bytes=1_000_000)
    async with (
        _registry(tmp_path) as registry,
        serving(
            lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)
        ) as address,
    ):
        home = tmp_path / "home"
        ports = {name: _free_port() for name in SERVICES}
        ports["registry"] = int(registry.address.rsplit(":", 1)[1])
        ports["ingest"] = int(address.rsplit(":", 1)[1])
        saved = {
            "kafka_port": _free_port(),
            "controller_port": _free_port(),
            "topic_prefix": "t",
            "ports": ports,
            "metrics_ports": DEFAULT_METRICS_PORTS,
        }
        (home / "run").mkdir(parents=True)
        (home / "run" / "stack.json").write_text(json.dumps(saved))
        yield home


@pytest.mark.parametrize(
    "verb",
    [
        ["train", "ghost"],
        ["train", "ghost", "--follow"],
        ["spec", "show", "ghost"],
        ["datasets", "show", "ghost"],
    ],
    ids=" ".join,
)
async def test_an_unknown_name_exits_not_found(home: Path, verb: list[str]) -> None:
    result = await asyncio.to_thread(CliRunner().invoke, app, ["--home", str(home), *verb])

    assert result.exit_code == EXIT_NOT_FOUND, result.output
    assert "ghost" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


async def test_train_with_the_trainer_down_exits_unavailable(home: Path, tmp_path: Path) -> None:
    # A model's first run trains on the dataset of its name, so a registered dataset is a known name.
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"target": "y", "task": "classification", "features": [{"name": "a"}]}))
    runner = CliRunner()
    registered = await asyncio.to_thread(
        runner.invoke, app, ["--home", str(home), "datasets", "register", "known", "--schema", str(schema)]
    )
    assert registered.exit_code == 0, registered.output

    result = await asyncio.to_thread(runner.invoke, app, ["--home", str(home), "train", "known"])

    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "cannot reach trainer" in result.output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
