"""The stack's home is found from any directory: the nearest `.cascade` upward, else the home the
last `cascade up` recorded (while it holds a stack), else the user's data directory; so `cascade
status` run outside the checkout sees the stack started inside it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.cli.main import home_for, record_home
from cascade.stack import DEFAULT_METRICS_PORTS, SERVICES, default_home

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_nearest_cascade_directory_upward_is_the_home(tmp_path: Path) -> None:
    (tmp_path / ".cascade").mkdir()
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)

    assert default_home(deep, {"HOME": str(tmp_path / "user")}) == tmp_path / ".cascade"


def test_without_one_the_home_is_under_the_user_data_directory(tmp_path: Path) -> None:
    assert default_home(tmp_path, {"HOME": "/home/u"}) == Path("/home/u/.local/share/cascade")
    assert default_home(tmp_path, {"XDG_DATA_HOME": "/data"}) == Path("/data/cascade")


def _stack_home(path: Path) -> Path:
    """A home a stack was started in: it has run/stack.json."""
    (path / "run").mkdir(parents=True)
    (path / "run" / "stack.json").write_text("{}")
    return path


def test_the_home_of_the_last_start_is_found_where_no_cascade_directory_is(tmp_path: Path) -> None:
    home = _stack_home(tmp_path / "checkout" / ".cascade")
    environ = {"HOME": str(tmp_path / "user"), "XDG_STATE_HOME": str(tmp_path / "state")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    record_home(home, environ)

    assert (tmp_path / "state" / "cascade" / "home").read_text().strip() == str(home.resolve())
    assert home_for(elsewhere, environ) == home.resolve()
    # Inside another checkout, its own .cascade comes first.
    other = _stack_home(tmp_path / "other" / ".cascade")
    assert home_for(other.parent, environ) == other


def test_a_recorded_home_that_holds_no_stack_any_more_is_passed_over(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path / "user"), "XDG_STATE_HOME": str(tmp_path / "state")}
    record_home(tmp_path / "removed" / ".cascade", environ)

    assert home_for(tmp_path, environ) == tmp_path / "user" / ".local" / "share" / "cascade"


# A stand-in for a running ingest service: a real process serving gRPC health SERVING, whose
# command line names `cascade.services.ingest`, which is what `cascade status` checks for.
_HEALTH_SERVER = textwrap.dedent(
    """
    import sys, grpc
    from concurrent import futures
    from grpc_health.v1 import health, health_pb2_grpc
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
    """
)


@pytest.fixture
def running_ingest(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A home at tmp_path/.cascade whose ingest runs (the stand-in), the others not."""
    home = tmp_path / ".cascade"
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _HEALTH_SERVER, str(port), "cascade.services.ingest"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        (home / "run").mkdir(parents=True)
        (home / "run" / "ingest.pid").write_text(str(process.pid))
        ports = {name: _free_port() for name in SERVICES} | {"ingest": port}
        saved = {
            "kafka_port": _free_port(),
            "controller_port": _free_port(),
            "kafka_brokers": 1,
            "topic_prefix": "t",
            "ports": ports,
            "metrics_ports": DEFAULT_METRICS_PORTS,
        }
        (home / "run" / "stack.json").write_text(json.dumps(saved))
        yield home, port
    finally:
        process.kill()
        process.wait()


def test_status_from_a_subdirectory_sees_the_running_service(
    running_ingest: tuple[Path, int], tmp_path: Path
) -> None:
    _home, port = running_ingest
    elsewhere = tmp_path / "some" / "project"
    elsewhere.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "CASCADE_HOME"}
    env["PYTHONPATH"] = str(REPO_ROOT)

    rows = _status_rows(elsewhere, env)
    assert rows["ingest"]["health"] == "SERVING"
    assert rows["ingest"]["endpoint"] == f"127.0.0.1:{port}"
    assert rows["trainer"]["health"] == "DOWN"


def _status_rows(cwd: Path, env: dict[str, str]) -> dict[str, dict[str, object]]:
    """`cascade status --json` run as a user would, in `cwd`: its rows by name."""
    result = subprocess.run(
        [sys.executable, "-m", "cascade.cli", "status", "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_status_outside_the_checkout_sees_the_stack_started_inside_it(
    running_ingest: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    home, port = running_ingest
    outside = tmp_path_factory.mktemp("outside")  # no .cascade in it or above it
    user = tmp_path_factory.mktemp("user")
    env = {k: v for k, v in os.environ.items() if k not in ("CASCADE_HOME", "XDG_DATA_HOME")}
    env |= {"PYTHONPATH": str(REPO_ROOT), "HOME": str(user), "XDG_STATE_HOME": str(user / "state")}
    record_home(home, env)  # what `cascade up` in the checkout did

    rows = _status_rows(outside, env)
    assert rows["ingest"]["health"] == "SERVING"
    assert rows["ingest"]["endpoint"] == f"127.0.0.1:{port}"
