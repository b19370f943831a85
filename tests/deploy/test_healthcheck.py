"""shared.healthcheck against a real grpc.aio health server on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from shared.healthcheck import main
from tests.grpc_server import serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def health() -> AsyncIterator[tuple[HealthServicer, str]]:
    servicer = HealthServicer()

    def register(server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

    async with serving(register) as address:
        yield servicer, address


async def _run(*argv: str) -> int:
    # The check is a blocking call; off the loop, so the server in this loop can answer it.
    return await asyncio.to_thread(main, list(argv))


async def test_serving_exits_0_and_prints_nothing(
    health: tuple[HealthServicer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, address = health
    await servicer.set("", SERVING)

    assert await _run(address) == 0
    assert capsys.readouterr().err == ""


async def test_not_serving_exits_1_with_the_status(
    health: tuple[HealthServicer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, address = health
    await servicer.set("", NOT_SERVING)

    assert await _run(address) == 1
    assert capsys.readouterr().err == f"unhealthy: {address}: NOT_SERVING\n"


async def test_a_named_service_is_checked_on_its_own(
    health: tuple[HealthServicer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, address = health
    await servicer.set("", NOT_SERVING)
    await servicer.set("cascade.ingest.v1.IngestService", SERVING)

    assert await _run(address, "--service", "cascade.ingest.v1.IngestService") == 0
    assert await _run(address, "--service", "no.such.Service") == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_nothing_listening_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{_free_port()}"

    assert await _run(address, "--timeout", "2") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"unhealthy: {address}: UNAVAILABLE")
    assert err.count("\n") == 1


def test_an_address_without_a_port_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["localhost"])
    assert exit_info.value.code == 2


async def test_runs_as_a_module_as_the_image_health_check_does(health: tuple[HealthServicer, str]) -> None:
    servicer, address = health
    command = [sys.executable, "-m", "shared.healthcheck", address]

    await servicer.set("", SERVING)
    serving_run = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    await servicer.set("", NOT_SERVING)
    not_serving_run = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)

    assert (serving_run.returncode, serving_run.stderr) == (0, "")
    assert not_serving_run.returncode == 1
    assert "NOT_SERVING" in not_serving_run.stderr
