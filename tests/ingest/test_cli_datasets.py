"""`cascade datasets` against a real IngestService over loopback."""

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.events import DataArrived
from cascade.services.ingest.core import IngestCore
from cascade.services.ingest.grpc_api import IngestServicer
from cascade.services.ingest.store import IngestStore
from cascade.stubs.cascade.ingest.v1 import ingest_pb2_grpc
from tests.grpc_server import serving


async def test_infer_register_list_and_show(tmp_path: Path) -> None:
    async def emit(event: DataArrived) -> None:
        pass

    servicer = IngestServicer(IngestCore(IngestStore(tmp_path / "store"), emit), max_upload_bytes=1_000_000)
    register = lambda s: ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, s)  # noqa: E731
    sample = tmp_path / "sample.csv"
    sample.write_text("age,colour,label\n30,red,0\n41,green,1\n")
    schema_file = tmp_path / "schema.json"
    runner = CliRunner()

    async def cascade(*args: str) -> str:
        result = await asyncio.to_thread(runner.invoke, app, ["datasets", *args, "--address", address])
        assert result.exit_code == 0, result.output
        return result.output

    async with serving(register) as address:
        await cascade("infer", str(sample), "--target", "label", "--output", str(schema_file))
        schema = json.loads(schema_file.read_text())
        assert [(f["name"], f["type"]) for f in schema["features"]] == [
            ("age", "integer"),
            ("colour", "categorical"),
        ]
        schema["features"][0]["max"] = 120
        schema["policy"] = {"out_of_range": "clip"}
        schema_file.write_text(json.dumps(schema))
        registered = await cascade("register", "people", "--schema", str(schema_file))
        assert "Registered dataset 'people' with 2 features" in registered and '"max": 120' in registered
        listed = await cascade("list")
        assert "people" in listed and "declared" in listed
        shown = await cascade("show", "people")
        assert '"out_of_range": "clip"' in shown and "Versions (0)" in shown

        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"target": "y", "task": "sorting", "features": [{"name": "a"}]}))
        result = await asyncio.to_thread(
            runner.invoke, app, ["datasets", "register", "other", "--schema", str(bad), "--address", address]
        )
        assert result.exit_code == 2 and "task must be one of" in result.output
