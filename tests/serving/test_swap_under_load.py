"""Closed-loop load through tritonclient (gRPC) and raw REST (JSON over HTTP) at once, while the
champion changes more than 20 times, with two refused versions (one corrupt in storage, one not an
ONNX file) in the middle of the run."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as triton

from .harness import assert_answers, raw_input, serving_client
from .support import MODEL, Dataset, RunningRegistry, TrainedModel

LAST_VERSION = 24  # promotions of versions 2..24: 23, of which 21 load
CORRUPT = 12  # its bytes do not match the digest the registry recorded
NOT_ONNX = 17  # its digest matches, but it is no model
CLIENTS = 8  # over gRPC
REST_CLIENTS = 4


def artifact_of(version: int) -> int:
    """Which trained model a version's artifact is: odd versions 1, even versions 2."""
    return 1 if version % 2 else 2


async def keep_asking_rest(
    http: httpx.AsyncClient,
    dataset: Dataset,
    start: int,
    done: asyncio.Event,
    answers: list[tuple[int, dict[str, Any]]],
    failures: list[BaseException | str],
) -> None:
    """A closed-loop REST client: JSON batches of 1 to 9 rows from row `start`, until `done`."""
    while not done.is_set():
        rows = dataset.rows[start : start + 1 + len(answers) % 9]
        request = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32"}]}
        request["inputs"][0]["data"] = rows.ravel().tolist()
        try:
            response = await http.post(f"/v2/models/{MODEL}/infer", json=request)
        except Exception as exc:
            failures.append(exc)
            continue
        if response.status_code != 200:
            failures.append(f"REST {response.status_code}: {response.text}")
        else:
            answers.append((start, response.json()))


def check_rest_answers(
    answers: list[tuple[int, dict[str, Any]]], models: dict[int, TrainedModel], dataset: Dataset
) -> set[int]:
    """Each REST answer is its version's model's answer; the versions that answered."""
    versions = set()
    for start, body in answers:
        version = int(body["model_version"])
        versions.add(version)
        outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}
        rows = dataset.rows[start : start + outputs["label"].shape[0]]
        model = models[artifact_of(version)]
        np.testing.assert_array_equal(outputs["label"], model.labels(rows))
        np.testing.assert_allclose(outputs["probabilities"], model.probabilities(rows), atol=1e-5)
    return versions


async def test_more_than_20_promotions_under_load_fail_no_request(
    registry: RunningRegistry, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    fake = registry.fake
    for version in range(3, LAST_VERSION + 1):
        fake.add(MODEL, version, models[artifact_of(version)].onnx)
    fake.recorded_sha256[MODEL, CORRUPT] = hashlib.sha256(b"what was uploaded").hexdigest()
    fake.artifacts[MODEL, NOT_ONNX] = b"\x08\x07 not an onnx model"

    answers: list[tuple[int, triton.InferResult]] = []
    rest_answers: list[tuple[int, dict[str, Any]]] = []
    failures: list[BaseException | str] = []
    done = asyncio.Event()

    async with serving_client(registry) as (serving, client):

        async def keep_asking(worker: int) -> None:
            start = worker * 7
            while not done.is_set():
                rows = 1 + (len(answers) + worker) % 9  # batches of 1 to 9 rows
                try:
                    answers.append(
                        (start, await client.infer(MODEL, [raw_input(dataset.rows[start : start + rows])]))
                    )
                except Exception as exc:
                    failures.append(exc)

        http = httpx.AsyncClient(base_url=f"http://{serving.http_url}", timeout=30)
        clients = [asyncio.create_task(keep_asking(worker)) for worker in range(CLIENTS)]
        clients += [
            asyncio.create_task(
                keep_asking_rest(http, dataset, 100 + worker * 7, done, rest_answers, failures)
            )
            for worker in range(REST_CLIENTS)
        ]
        champion = 1
        for version in range(2, LAST_VERSION + 1):
            fake.promote(MODEL, version)
            await serving.promote(MODEL, version)
            if version in (CORRUPT, NOT_ONNX):
                event = await asyncio.wait_for(serving.load_failed.get(), 10)
                reason = "digest_mismatch" if version == CORRUPT else "invalid_model"
                assert (event["model_version"], event["reason"], event["serving_version"]) == (
                    version,
                    reason,
                    champion,
                )
                answer = await client.infer(MODEL, [raw_input(dataset.rows[:3])])
                assert answer.get_response().model_version == str(champion)  # the old one still serves
            else:
                champion = version
            await asyncio.sleep(0.02)  # let some requests land on each version
        done.set()
        await asyncio.gather(*clients)
        await http.aclose()

        assert failures == []
        served_versions = set()
        for start, result in answers:
            version = int(result.get_response().model_version)
            served_versions.add(version)
            rows = dataset.rows[start : start + result.as_numpy("label").shape[0]]
            assert_answers(result, models[artifact_of(version)], rows)
        rest_versions = check_rest_answers(rest_answers, models, dataset)
        served_versions |= rest_versions
        assert CORRUPT not in served_versions and NOT_ONNX not in served_versions
        assert len(rest_versions) >= 5, sorted(rest_versions)  # REST, too, ran through the swaps
        # The load really overlapped the swaps (it typically reaches every loaded version).
        assert len(served_versions) >= 5, sorted(served_versions)
        assert (await client.infer(MODEL, [raw_input(dataset.rows[:2])])).get_response().model_version == str(
            LAST_VERSION
        )
        (stats,) = (await client.get_inference_statistics(MODEL, str(LAST_VERSION))).model_stats
        assert stats.inference_stats.fail.count == 0
