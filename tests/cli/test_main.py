"""The `cascade` command line: every help page renders, and commands fail without tracebacks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade.cli.errors import EXIT_UNAVAILABLE
from cascade.cli.main import app

REPO_ROOT = Path(__file__).resolve().parents[2]

COMMANDS = [
    [],
    ["kafka"],
    ["kafka", "install"],
    ["kafka", "start"],
    ["kafka", "stop"],
    ["kafka", "status"],
    ["up"],
    ["status"],
    ["down"],
    ["ingest"],
    ["demo"],
    ["explain"],
]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "cascade")
def test_help_renders(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])

    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_top_level_help_lists_every_command(runner: CliRunner) -> None:
    output = runner.invoke(app, ["--help"]).output

    for command in ("kafka", "up", "status", "down", "ingest", "demo", "explain", "--home"):
        assert command in output


def test_status_of_a_stack_never_started_is_all_down(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--home", str(tmp_path / "home"), "--kafka-port", str(_free_port()), "status", "--json"]
    )

    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["name"] == "kafka"
    assert {row["health"] for row in rows} == {"DOWN"}


def test_down_on_a_stack_never_started_is_a_no_op(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path / "home"), "down"])

    assert result.exit_code == 0, result.output
    assert not (tmp_path / "home").exists()


def test_ingest_of_a_missing_file_says_so(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(tmp_path / "absent.csv"), "--dataset", "d"])

    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_ingest_of_an_unknown_suffix_asks_for_the_format(runner: CliRunner, tmp_path: Path) -> None:
    batch = tmp_path / "batch.txt"
    batch.write_text("a,target\n1,0\n")

    result = runner.invoke(app, ["--home", str(tmp_path), "ingest", str(batch), "--dataset", "d"])

    assert result.exit_code == 1
    assert "pass --format" in result.output
    assert "Traceback" not in result.output


def test_ingest_to_an_unreachable_service_is_one_friendly_line(tmp_path: Path) -> None:
    # A separate process: ingest installs the process-wide tracer provider, which must not leak
    # into the test process.
    batch = tmp_path / "batch.csv"
    batch.write_text("a,target\n1,0\n")
    address = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "cascade.cli", "--home", str(tmp_path / "home")]
    command += ["ingest", str(batch), "--dataset", "d", "--address", address]

    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_env_without_otel(),
    )

    assert result.returncode == EXIT_UNAVAILABLE
    assert f"cannot reach ingest at {address}" in result.stderr
    assert "cascade up" in result.stderr
    assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env_without_otel() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_TRACES_EXPORTER"] = "none"
    return env
