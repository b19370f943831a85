"""A real S3 API server for the tests: moto's server mode (moto[server] from PyPI, Apache-2.0), run
as a separate process on a fixed port, started once per test run and shared by every module that
asks for it. Each test uses a bucket of its own, so nothing leaks between tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr

from cascade.objectstore import ObjectStoreSettings

# Below the ephemeral range (tests/integration/conftest.py says why); 26500-26549 are these servers'
# (the first free one is taken, so test runs side by side each get their own).
S3_PORTS = range(26501, 26520)
S3_PORTS_WITH_AUTH = range(26520, 26540)
ACCESS_KEY_ID = "AKIACASCADETESTKEY01"
SECRET_ACCESS_KEY = "cascade-test-secret-4f7d1c9e-not-for-logs"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def settings(self, **overrides: Any) -> ObjectStoreSettings:
        fields: dict[str, Any] = {
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": "us-east-1",
            "s3_access_key_id": ACCESS_KEY_ID,
            "s3_secret_access_key": SecretStr(SECRET_ACCESS_KEY),
            "s3_max_attempts": 2,
            **overrides,
        }
        return ObjectStoreSettings(**fields)

    def client(self) -> Any:
        """A plain boto3 client, for what the tests do behind the stores' backs."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def new_bucket(self) -> str:
        name = f"cascade-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


def _answering(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _free_port(ports: range) -> int:
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1} for an S3 test server")


@contextlib.contextmanager
def run_moto_server(ports: range, env: dict[str, str] | None = None) -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency: pip install -e '.[dev]'")
    port = _free_port(ports)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 60
        while not _answering(port):
            if process.poll() is not None:
                raise RuntimeError(f"moto's server exited with {process.returncode} before answering")
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto's server did not answer on port {port} within 60 s")
            time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Shared:
    """One server per test run, however many modules' session fixtures ask for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._context: contextlib.AbstractContextManager[S3Server] | None = None
        self._server: S3Server | None = None

    @contextlib.contextmanager
    def use(self) -> Iterator[S3Server]:
        with self._lock:
            if self._server is None:
                self._context = run_moto_server(S3_PORTS)
                self._server = self._context.__enter__()
            self._users += 1
            server = self._server
        try:
            yield server
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._context is not None:
                    self._context.__exit__(None, None, None)
                    self._context = self._server = None


shared_s3_server = _Shared()


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture() -> Iterator[S3Server]:
    """Import it into a test module (`from tests.s3_server import s3_server_fixture`) to use it."""
    with shared_s3_server.use() as server:
        yield server
