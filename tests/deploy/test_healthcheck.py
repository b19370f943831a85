"""cascade.healthcheck against a real grpc.aio health server on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from cascade.healthcheck import main, security_of
from cascade.security import server_credentials
from cascade.services.serving.readiness import GatedHealth
from cascade.settings import ServiceSettings
from cascade.stack.certs import LocalPki, init_pki
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
    command = [sys.executable, "-m", "cascade.healthcheck", address]

    await servicer.set("", SERVING)
    serving_run = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    await servicer.set("", NOT_SERVING)
    not_serving_run = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)

    assert (serving_run.returncode, serving_run.stderr) == (0, "")
    assert not_serving_run.returncode == 1
    assert "NOT_SERVING" in not_serving_run.stderr


# ---------------------------------------------------------------------- over TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return init_pki(tmp_path_factory.mktemp("pki"), ["ingest"])


@pytest.fixture
def foreign_ca(tmp_path: Path) -> Path:
    return init_pki(tmp_path / "other", ["ingest"]).ca_file


@asynccontextmanager
async def _tls_health(pki: LocalPki, *, require_client_cert: bool) -> AsyncIterator[str]:
    """A SERVING health server with the ingest certificate of `pki`, as a TLS service runs it."""
    servicer = HealthServicer()
    await servicer.set("", SERVING)
    identity = pki.identity("ingest")
    settings = ServiceSettings(
        tls_cert_file=identity.cert_file,
        tls_key_file=identity.key_file,
        tls_ca_file=pki.ca_file,
        tls_require_client_cert=require_client_cert,
    )

    def register(server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

    async with serving(register, credentials=server_credentials(settings)) as address:
        yield address


async def test_tls_is_checked_against_the_ca_given(
    pki: LocalPki, foreign_ca: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with _tls_health(pki, require_client_cert=False) as address:
        trusted = await _run(address, "--ca-file", str(pki.ca_file))
        plaintext = await _run(address, "--timeout", "2")
        distrusted = await _run(address, "--ca-file", str(foreign_ca), "--timeout", "2")

    assert (trusted, plaintext, distrusted) == (0, 1, 1)
    assert capsys.readouterr().err.count(f"unhealthy: {address}: UNAVAILABLE") == 2


def _service_tls_env(pki: LocalPki, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest container's own TLS settings, as compose and Kubernetes set them."""
    identity = pki.identity("ingest")
    monkeypatch.setenv("CASCADE_INGEST_TLS_CA_FILE", str(pki.ca_file))
    monkeypatch.setenv("CASCADE_INGEST_TLS_CERT_FILE", str(identity.cert_file))
    monkeypatch.setenv("CASCADE_INGEST_TLS_KEY_FILE", str(identity.key_file))


async def test_mtls_needs_the_services_own_certificate_which_tls_of_presents(
    pki: LocalPki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _service_tls_env(pki, monkeypatch)

    async with _tls_health(pki, require_client_cert=True) as address:
        ca_only = await _run(address, "--ca-file", str(pki.ca_file), "--timeout", "2")
        as_ingest = await _run(address, "--tls-of", "ingest")
        as_trainer = await _run(address, "--tls-of", "trainer", "--timeout", "2")  # no TLS settings

    assert (ca_only, as_ingest, as_trainer) == (1, 0, 1)
    assert capsys.readouterr().err.count(f"unhealthy: {address}: UNAVAILABLE") == 2


async def test_a_missing_tls_file_is_unhealthy_and_named(
    tmp_path: Path, pki: LocalPki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _service_tls_env(pki, monkeypatch)
    missing = tmp_path / "no-such-ca.pem"
    monkeypatch.setenv("CASCADE_INGEST_TLS_CA_FILE", str(missing))

    assert await _run("127.0.0.1:1", "--tls-of", "ingest") == 1
    assert (
        capsys.readouterr().err
        == f"unhealthy: 127.0.0.1:1: cannot read {missing}: No such file or directory\n"
    )


def test_a_certificate_without_its_key_or_the_ca_is_refused(pki: LocalPki) -> None:
    cert = pki.identity("ingest").cert_file

    with pytest.raises(ValueError, match="both the certificate and its key"):
        security_of(None, ca_file=pki.ca_file, cert_file=cert)
    with pytest.raises(ValueError, match="give the CA file too"):
        security_of(None, cert_file=cert, key_file=pki.identity("ingest").key_file)


async def test_runs_as_a_module_over_mtls_as_the_secured_image_does(pki: LocalPki) -> None:
    identity = pki.identity("ingest")
    environment = {
        **os.environ,
        "CASCADE_INGEST_TLS_CA_FILE": str(pki.ca_file),
        "CASCADE_INGEST_TLS_CERT_FILE": str(identity.cert_file),
        "CASCADE_INGEST_TLS_KEY_FILE": str(identity.key_file),
    }
    async with _tls_health(pki, require_client_cert=True) as address:
        command = [sys.executable, "-m", "cascade.healthcheck", "--tls-of", "ingest", address]
        run = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, env=environment
        )

    assert (run.returncode, run.stderr) == (0, "")


async def test_refused_settings_are_one_unhealthy_line_without_their_inputs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    password = "hunter2-not-to-be-echoed"
    monkeypatch.setenv("CASCADE_INGEST_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CASCADE_INGEST_KAFKA_SASL_PASSWORD", password)  # and no user: refused

    assert await _run("127.0.0.1:1", "--tls-of", "ingest") == 1
    err = capsys.readouterr().err
    assert err.startswith("unhealthy: 127.0.0.1:1: the settings of ingest are refused: ")
    assert "kafka_sasl_username" in err
    assert err.count("\n") == 1
    assert password not in err


async def test_not_serving_prints_the_reason_the_service_gives(capsys: pytest.CaptureFixture[str]) -> None:
    """A service may say why it is not serving (trailing metadata): serving's start-up readiness."""
    servicer = GatedHealth([""], lambda: "not ready: loading 1 model (fraud)")

    def register(server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

    async with serving(register) as address:
        await servicer.set("", SERVING)  # held back until the servicer opens

        assert await _run(address) == 1
        assert (
            capsys.readouterr().err
            == f"unhealthy: {address}: NOT_SERVING: not ready: loading 1 model (fraud)\n"
        )
