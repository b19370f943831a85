"""A client-side handle on the real serving service running in a subprocess (serving_process.py),
and tritonclient helpers shared by the tests that call it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import aio as triton_aio

from .support import MODEL, RunningRegistry, TrainedModel

HARNESS = Path(__file__).with_name("serving_process.py")
REPO_ROOT = Path(__file__).parents[2]


class ServingProcess:
    """The serving service in a child process; see serving_process.py for its line protocol."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.http_port = 0
        self.logged: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.promoted: asyncio.Queue[str] = asyncio.Queue()
        self.load_failed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.live: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.compared: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_stdout())

    @classmethod
    async def start(
        cls, registry_address: str, *options: str, env: Mapping[str, str] | None = None
    ) -> ServingProcess:
        """`options`: more of serving_process.py's flags, e.g. --port, --workers and --index; `env`:
        more settings (CASCADE_SERVING_*)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HARNESS),
            "--registry",
            registry_address,
            *options,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OTEL_SDK_DISABLED": "true", **(env or {})},
        )
        serving = cls(process)
        await asyncio.wait_for(asyncio.shield(serving.port), 30)
        return serving

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port.result()}"

    @property
    def http_url(self) -> str:
        """host:port of the REST endpoint (tritonclient.http's form; prefix http:// for httpx)."""
        return f"127.0.0.1:{self.http_port}"

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        while line := (await self.process.stdout.readline()).decode():
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "PORT":
                grpc_port, http_port = rest.split()
                self.http_port = int(http_port)
                self.port.set_result(int(grpc_port))
            elif kind == "LOGGED":
                self.logged.put_nowait(json.loads(rest))
            elif kind == "PROMOTED":
                self.promoted.put_nowait(rest)
            elif kind == "PROMOTE_FAILED":
                self.promoted.put_nowait(f"failed: {rest}")
            elif kind == "LOAD_FAILED":
                self.load_failed.put_nowait(json.loads(rest))
            elif kind == "LIVE":
                self.live.put_nowait(json.loads(rest))
            elif kind == "COMPARED":
                self.compared.put_nowait(json.loads(rest))
        if not self.port.done():
            self.port.set_exception(RuntimeError("the serving process exited before it started"))

    async def promote(self, model: str, version: int) -> None:
        """Publish ModelPromoted and wait until the service has handled it."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"promote {model} {version}\n".encode())
        await self.process.stdin.drain()
        assert await asyncio.wait_for(self.promoted.get(), 30) == f"{model} {version}"

    async def change_traffic(self, model: str, revision: int) -> str:
        """Publish ModelTrafficChanged and wait until the service has handled it; what it said
        (`<model> <revision>`, or `failed: ...` when the handler raised)."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"traffic {model} {revision}\n".encode())
        await self.process.stdin.drain()
        return await asyncio.wait_for(self.promoted.get(), 30)

    async def wait_until_ready(self, client: triton_aio.InferenceServerClient, version: str = "") -> None:
        for _ in range(600):  # polling a remote service: up to 30 s
            if await client.is_model_ready(MODEL, version):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{MODEL} never became ready")

    async def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # the harness stops the service gracefully
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await self._reader


@contextlib.asynccontextmanager
async def serving_client(registry: RunningRegistry) -> AsyncIterator[tuple[ServingProcess, Any]]:
    serving = await ServingProcess.start(registry.address)
    client = triton_aio.InferenceServerClient(serving.url)
    try:
        await serving.wait_until_ready(client)
        yield serving, client
    finally:
        await client.close()
        await serving.stop()


def raw_input(rows: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("input", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    return tensor


def assert_answers(result: triton.InferResult, model: TrainedModel, rows: np.ndarray) -> None:
    np.testing.assert_array_equal(result.as_numpy("label"), model.labels(rows))
    np.testing.assert_allclose(result.as_numpy("probabilities"), model.probabilities(rows), atol=1e-5)
