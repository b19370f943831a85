"""A restarted replica tells the truth before its first model load: the real serving service (a
subprocess; Kafka in memory), started while the registry names a champion whose download the test
holds back, is not ready (health, ServerReady, /v2/health/ready), answers UNAVAILABLE over gRPC and
503 over REST for that model (NOT_FOUND / 404 for a model the registry does not name), and serves
it once it has loaded."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import aio as triton_aio

from cascade.healthcheck import probe
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc as pb_grpc

from .harness import ServingProcess, assert_answers, raw_input
from .support import MODEL, Dataset, FakeRegistry, RunningRegistry, TrainedModel


class HeldRegistry(FakeRegistry):
    """The fake registry, whose downloads wait until `release` is set; `asked` is set at the first."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def DownloadArtifact(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.asked.set()
        await self.release.wait()
        async for chunk in super().DownloadArtifact(request, context):
            yield chunk


@contextlib.asynccontextmanager
async def held_registry(models: dict[int, TrainedModel]) -> AsyncIterator[RunningRegistry]:
    fake = HeldRegistry()
    fake.add(MODEL, 1, models[1].onnx)
    fake.promote(MODEL, 1)
    server = grpc.aio.server()
    pb_grpc.add_RegistryServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield RunningRegistry(fake, f"127.0.0.1:{port}")
    finally:
        fake.release.set()
        await server.stop(None)


async def until_server_ready(client: triton_aio.InferenceServerClient) -> None:
    for _ in range(600):  # polling a remote service: up to 30 s
        if await client.is_server_ready():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("serving never became ready")


async def test_a_starting_replica_is_not_ready_and_answers_unavailable_until_its_champion_loads(
    models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    rows = dataset.rows[:3]
    async with held_registry(models) as registry:
        fake = registry.fake
        assert isinstance(fake, HeldRegistry)
        process = await ServingProcess.start(registry.address)
        client = triton_aio.InferenceServerClient(process.url)
        http = httpx.AsyncClient(base_url=f"http://{process.http_url}", timeout=30)
        try:
            await asyncio.wait_for(fake.asked.wait(), 30)  # listed, and downloading the champion

            # Not ready, and each readiness endpoint says so.
            assert not await client.is_server_ready()
            assert not await client.is_model_ready(MODEL)
            health, why = await asyncio.to_thread(probe, process.url)
            assert health == "NOT_SERVING"
            assert why == f"{process.url}: NOT_SERVING: not ready: loading 1 model ({MODEL})"
            ready = await http.get("/v2/health/ready")
            assert ready.status_code == 400
            assert ready.json() == {"ready": False, "reason": f"not ready: loading 1 model ({MODEL})"}

            # The loading model is UNAVAILABLE (retryable), over gRPC and REST alike.
            with pytest.raises(triton.InferenceServerException, match="is loading") as loading:
                await client.infer(MODEL, [raw_input(rows)])
            assert loading.value.status() == "StatusCode.UNAVAILABLE"
            body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                                "data": rows.ravel().tolist()}]}  # fmt: skip
            answer = await http.post(f"/v2/models/{MODEL}/infer", json=body)
            assert answer.status_code == 503
            assert answer.json() == {"error": f"model '{MODEL}' is loading; retry shortly"}

            # A model the registry does not name is not found, as ever.
            with pytest.raises(triton.InferenceServerException) as unknown:
                await client.infer("unknown", [raw_input(rows)])
            assert unknown.value.status() == "StatusCode.NOT_FOUND"
            assert (await http.post("/v2/models/unknown/infer", json=body)).status_code == 404

            fake.release.set()
            await until_server_ready(client)

            assert await client.is_model_ready(MODEL)
            assert (await asyncio.to_thread(probe, process.url)) == ("SERVING", "")
            ready = await http.get("/v2/health/ready")
            assert (ready.status_code, ready.json()) == (200, {"ready": True})
            assert_answers(await client.infer(MODEL, [raw_input(rows)]), models[1], rows)
            served = await http.post(f"/v2/models/{MODEL}/infer", json=body)
            assert served.status_code == 200
            label = next(output for output in served.json()["outputs"] if output["name"] == "label")
            np.testing.assert_array_equal(label["data"], models[1].labels(rows))
        finally:
            await http.aclose()
            await client.close()
            await process.stop()


async def test_a_replica_whose_champion_is_refused_becomes_ready(
    models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    """A bad model does not keep a replica unready: refused with a reason, and the replica ready."""
    async with held_registry(models) as registry:
        fake = registry.fake
        assert isinstance(fake, HeldRegistry)
        fake.artifacts[MODEL, 1] = b"not an onnx model"
        fake.release.set()
        process = await ServingProcess.start(registry.address)
        client = triton_aio.InferenceServerClient(process.url)
        try:
            failed = await asyncio.wait_for(process.load_failed.get(), 30)
            assert (failed["model"], failed["model_version"], failed["reason"]) == (MODEL, 1, "invalid_model")
            await until_server_ready(client)
            assert (await asyncio.to_thread(probe, process.url)) == ("SERVING", "")
            with pytest.raises(triton.InferenceServerException) as refused:
                await client.infer(MODEL, [raw_input(dataset.rows[:1])])
            assert refused.value.status() == "StatusCode.NOT_FOUND"
        finally:
            await client.close()
            await process.stop()


async def test_an_unreachable_registry_keeps_a_replica_unready_for_its_budget_only(dataset: Dataset) -> None:
    """Nothing listens at the registry's address: not ready, saying it cannot read the registry, and
    any model is UNAVAILABLE (nobody knows yet whether it exists); once the budget is spent the
    replica is ready with nothing loaded, and an unknown model is NOT_FOUND again."""
    with socket.socket() as unused:  # a port nothing listens on: every call is refused
        unused.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{unused.getsockname()[1]}"
    process = await ServingProcess.start(nowhere, env={"CASCADE_SERVING_STARTUP_BUDGET_SECONDS": "15"})
    client = triton_aio.InferenceServerClient(process.url)
    try:
        assert not await client.is_server_ready()
        health, why = await asyncio.to_thread(probe, process.url)
        assert health == "NOT_SERVING"
        assert f"{process.url}: NOT_SERVING: not ready: reading the registry's models" in why
        with pytest.raises(triton.InferenceServerException, match="has not read the registry") as starting:
            await client.infer(MODEL, [raw_input(dataset.rows[:1])])
        assert starting.value.status() == "StatusCode.UNAVAILABLE"

        await until_server_ready(client)  # the budget spent: ready with what it has (nothing)

        assert (await asyncio.to_thread(probe, process.url)) == ("SERVING", "")
        with pytest.raises(triton.InferenceServerException) as unknown:
            await client.infer(MODEL, [raw_input(dataset.rows[:1])])
        assert unknown.value.status() == "StatusCode.NOT_FOUND"
    finally:
        await client.close()
        await process.stop()
