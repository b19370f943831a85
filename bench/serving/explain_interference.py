"""Does explaining slow inference down? One-row ModelInfer latency on the real serving service while
idle and while KernelSHAP explanations run back to back in its explainer pool, at a chosen CPU
priority of the explainer's processes (CASCADE_SERVING_EXPLAIN_NICE).

    flock /tmp/cascade-heavy.lock .venv/bin/python bench/serving/explain_interference.py \
        [--nice 0 10] [--rounds 3] [--seconds 5]

For each nice value: one serving process (the real `build()` in tests/serving's harness, with the
fake registry of tests/serving/support.py over the real registry protocol) serving a logistic
regression (what ModelInfer is timed on) and a small neural network (explained by KernelSHAP, 100
background rows: about 210,000 model evaluations per row). Idle and explaining windows alternate,
`--rounds` of each, so load from elsewhere falls on both alike; latency is one closed-loop
tritonclient caller, explanations one closed-loop ExplainClient caller, both in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from sklearn.datasets import load_breast_cancer
from tritonclient.grpc import aio as triton_aio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cascade.client.calls import RemoteService
from cascade.client.explain import ExplainClient
from tests.serving.harness import ServingProcess, raw_input
from tests.serving.support import MODEL, Dataset, running_registry, train
from tests.serving.test_explain import NEURAL, _neural_onnx


async def _infer_window(
    client: triton_aio.InferenceServerClient, row: np.ndarray, seconds: float
) -> list[float]:
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        await client.infer(MODEL, [raw_input(row)])
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _measure(registry_address: str, dataset: Dataset, nice: int, rounds: int, seconds: float) -> None:
    serving = await ServingProcess.start(registry_address, env={"CASCADE_SERVING_EXPLAIN_NICE": str(nice)})
    triton = triton_aio.InferenceServerClient(serving.url)
    channel = grpc.aio.insecure_channel(serving.url)
    explainer = ExplainClient(RemoteService("serving", channel, serving.url), timeout=120)
    try:
        await serving.wait_until_ready(triton)
        for _ in range(600):  # the second model loads after the first: up to 30 s
            if await triton.is_model_ready(NEURAL):
                break
            await asyncio.sleep(0.05)
        first = time.perf_counter()
        explained = await explainer.explain(NEURAL, dataset.rows[10:11])
        print(
            f"nice {nice}: first explanation {time.perf_counter() - first:.2f} s (pool start included), "
            f"{explained.method}, {explained.evaluations} evaluations"
        )
        row = dataset.rows[:1]
        idle: list[float] = []
        busy: list[float] = []
        explanations: list[float] = []
        for _ in range(rounds):
            idle += await _infer_window(triton, row, seconds)
            stop = asyncio.Event()

            async def explain_back_to_back(stop: asyncio.Event = stop) -> None:
                index = 0
                while not stop.is_set():
                    answer = await explainer.explain(NEURAL, dataset.rows[index % 500 : index % 500 + 1])
                    explanations.append(answer.seconds)
                    index += 1

            explaining = asyncio.create_task(explain_back_to_back())
            await asyncio.sleep(0.3)
            busy += await _infer_window(triton, row, seconds)
            stop.set()
            await explaining
        for name, values in (("idle", idle), ("explaining", busy)):
            p50, p99 = np.percentile(values, [50, 99])
            print(f"  ModelInfer {name:<10} n={len(values):5d}  p50 {p50:.2f} ms  p99 {p99:.2f} ms")
        print(f"  {len(explanations)} explanations, median {np.median(explanations):.3f} s in the worker")
    finally:
        await triton.close()
        await explainer.close()
        await serving.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nice", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    options = parser.parse_args()
    data = load_breast_cancer()
    dataset = Dataset(data.data.astype(np.float32), [str(name) for name in data.feature_names])
    models = {1: train(dataset.rows, data.target, 1.0), 2: train(dataset.rows, data.target, 0.001)}
    async with running_registry(models, dataset) as registry:
        background = json.dumps({"features": dataset.features, "rows": dataset.rows[:100].tolist()})
        registry.fake.tags[MODEL, 1]["explain_background"] = background
        tags = {"features": json.dumps(dataset.features), "explain_background": background}
        registry.fake.add(NEURAL, 1, _neural_onnx(dataset), tags)
        registry.fake.promote(NEURAL, 1)
        for nice in options.nice:
            await _measure(registry.address, dataset, nice, options.rounds, options.seconds)


if __name__ == "__main__":
    asyncio.run(main())
