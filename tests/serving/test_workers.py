"""Several serving workers on one port (SO_REUSEPORT), each following every promotion itself."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import httpx
from tritonclient.grpc import aio as triton_aio

from .harness import ServingProcess, assert_answers, raw_input
from .support import MODEL, Dataset, RunningRegistry, TrainedModel

WORKERS = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_workers_share_the_port_and_each_follows_promotions(
    registry: RunningRegistry, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    port, http_port = free_port(), free_port()
    options = ["--port", str(port), "--http-port", str(http_port), "--workers", str(WORKERS)]
    workers = [
        await ServingProcess.start(registry.address, *options, "--index", str(index))
        for index in range(WORKERS)
    ]  # the second binds the port the first holds: only SO_REUSEPORT allows it
    url = f"127.0.0.1:{port}"
    rows = dataset.rows[:4]
    try:
        assert [worker.port.result() for worker in workers] == [port] * WORKERS
        assert [worker.http_port for worker in workers] == [http_port] * WORKERS  # REST shares its port too

        async def answers_on_fresh_connections(version: str) -> None:
            for _ in range(8):  # new connections, which the kernel spreads over the workers
                client = triton_aio.InferenceServerClient(url)
                try:
                    for _ in range(600):  # polling a remote service: up to 30 s
                        if await client.is_model_ready(MODEL, version):
                            break
                        await asyncio.sleep(0.05)
                    result = await client.infer(MODEL, [raw_input(rows)])
                    assert result.get_response().model_version == version
                    assert_answers(result, models[int(version)], rows)
                    config = (await client.get_model_config(MODEL)).config
                    assert config.instance_group[0].count == WORKERS
                finally:
                    await client.close()
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
                    # This kept-alive connection may have landed on the worker that has not loaded
                    # the version yet: ask that worker, as the gRPC loop above asks its own.
                    for _ in range(600):
                        ready = await http.get(f"/v2/models/{MODEL}/versions/{version}/ready")
                        if ready.status_code == 200:
                            break
                        await asyncio.sleep(0.05)
                    body = {"inputs": [{"name": "input", "shape": [4, 30], "datatype": "FP32"}]}
                    body["inputs"][0]["data"] = rows.ravel().tolist()
                    response = await http.post(f"/v2/models/{MODEL}/infer", json=body)
                    assert (response.status_code, response.json()["model_version"]) == (200, version)

        await answers_on_fresh_connections("1")
        registry.fake.promote(MODEL, 2)
        for worker in workers:
            await worker.promote(MODEL, 2)
        await answers_on_fresh_connections("2")

        # Each worker reports a refused version itself, under its own name.
        registry.fake.add(MODEL, 3, models[1].onnx)
        registry.fake.recorded_sha256[MODEL, 3] = hashlib.sha256(b"something else").hexdigest()
        registry.fake.promote(MODEL, 3)
        for worker in workers:
            await worker.promote(MODEL, 3)
        events = [await asyncio.wait_for(worker.load_failed.get(), 10) for worker in workers]
        assert sorted(event["instance"] for event in events) == ["test-0", "test-1"]
        assert {(event["model_version"], event["serving_version"]) for event in events} == {(3, 2)}
        await answers_on_fresh_connections("2")
    finally:
        for worker in workers:
            await worker.stop()
