"""The traffic split end to end in the real serving service (a subprocess; Kafka in memory), called
through tritonclient and raw REST: the canary's share by routing key, sticky and the same over both
transports, explicit versions, a shadow that never changes the answer, canary answers logged as
such, LiveTrafficReported and PredictionsCompared as the service publishes them, and a closed-loop
load while the split changes more than 20 times."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import aio as triton_aio

from cascade.services.serving.traffic import share_of

from .harness import ServingProcess, assert_answers, raw_input
from .support import MODEL, Dataset, RunningRegistry, TrainedModel
from .traffic_support import TrafficRegistry, narrow_model, running_traffic_registry

# Reports every 0.2 s, so a test sees them at once.
ENV = {"CASCADE_SERVING_LIVE_STATS_INTERVAL_SECONDS": "0.2"}


@pytest.fixture
async def registry(models: dict[int, TrainedModel], dataset: Dataset) -> AsyncIterator[RunningRegistry]:
    async with running_traffic_registry(models, dataset) as running:
        yield running


@pytest.fixture(scope="module")
def narrow(dataset: Dataset) -> bytes:
    return narrow_model(dataset)


def fake(registry: RunningRegistry) -> TrafficRegistry:
    assert isinstance(registry.fake, TrafficRegistry)
    return registry.fake


@contextlib.asynccontextmanager
async def serving(registry: RunningRegistry) -> AsyncIterator[tuple[ServingProcess, Any, httpx.AsyncClient]]:
    process = await ServingProcess.start(registry.address, env=ENV)
    client = triton_aio.InferenceServerClient(process.url)
    http = httpx.AsyncClient(base_url=f"http://{process.http_url}", timeout=30)
    try:
        await process.wait_until_ready(client)
        yield process, client, http
    finally:
        await http.aclose()
        await client.close()
        await process.stop()


async def set_split(process: ServingProcess, registry: RunningRegistry, **split: Any) -> None:
    """Change the split in the registry, announce it, and wait until the service has handled it."""
    revision = fake(registry).set_traffic(MODEL, **split)
    assert await process.change_traffic(MODEL, revision) == f"{MODEL} {revision}"


async def live_counts(
    process: ServingProcess, revision: int, requests: int, seconds: float = 20, settle: float = 0.0
) -> tuple[dict[tuple[int, str], tuple[int, int]], list[dict[str, Any]]]:
    """(requests, failures) per (version, role) summed over the LiveTrafficReported events of
    `revision` until they add up to `requests` (and whatever else comes within `settle` seconds
    after), and those events."""
    counts: dict[tuple[int, str], tuple[int, int]] = {}
    events: list[dict[str, Any]] = []

    def add(event: dict[str, Any]) -> None:
        if event["traffic_revision"] != revision:
            return
        events.append(event)
        for version in event["versions"]:
            assert sum(version["latency_buckets"]) == version["requests"]
            key = (version["version"], version["role"])
            before = counts.get(key, (0, 0))
            counts[key] = (before[0] + version["requests"], before[1] + version["failures"])

    async def collect() -> None:
        while sum(n for n, _ in counts.values()) < requests:
            add(await process.live.get())

    await asyncio.wait_for(collect(), seconds)
    await asyncio.sleep(settle)
    while not process.live.empty():
        add(process.live.get_nowait())
    return counts, events


async def compared_rows(
    process: ServingProcess, role: str, rows: int, seconds: float = 20
) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """The PredictionsCompared events of `role` until they hold `rows` rows, and their rows joined."""
    events: list[dict[str, Any]] = []
    joined: dict[str, list[Any]] = {"request_ids": [], "champion_outputs": [], "challenger_outputs": []}

    async def collect() -> None:
        while len(joined["request_ids"]) < rows:
            event = await process.compared.get()
            if event["challenger_role"] == role:
                events.append(event)
                for field, values in joined.items():
                    values.extend(event[field])

    await asyncio.wait_for(collect(), seconds)
    return events, joined


async def test_the_canary_answers_its_share_by_routing_key_over_grpc_and_rest(
    registry: RunningRegistry, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    async with serving(registry) as (process, client, http):
        await set_split(process, registry, canary=2, canary_percent=30)
        rows = dataset.rows[:4]
        keys = [f"user-{i}" for i in range(60)]
        for key in keys:
            expected = 2 if share_of(MODEL, key) < 30 else 1
            result = await client.infer(MODEL, [raw_input(rows)], parameters={"routing_key": key})
            assert result.get_response().model_version == str(expected), key
            assert_answers(result, models[expected], rows)
            body = {
                "parameters": {"routing_key": key},
                "inputs": [
                    {"name": "input", "shape": [4, 30], "datatype": "FP32", "data": rows.ravel().tolist()}
                ],
            }
            response = await http.post(f"/v2/models/{MODEL}/infer", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == str(expected), key  # REST routes the same way
        # Without a routing key the request id is the key; a named version bypasses the split.
        canary_key = next(key for key in keys if share_of(MODEL, key) < 30)
        by_id = await client.infer(MODEL, [raw_input(rows)], request_id=canary_key)
        assert by_id.get_response().model_version == "2"
        pinned = await client.infer(MODEL, [raw_input(rows)], "1", parameters={"routing_key": canary_key})
        assert pinned.get_response().model_version == "1"
        bad = await http.post(
            f"/v2/models/{MODEL}/infer",
            json={"parameters": {"routing_key": [1]}, "inputs": body["inputs"]},
        )
        assert bad.status_code == 400 and "routing_key" in bad.json()["error"]


async def test_canary_answers_are_logged_and_reported_and_mirrored_by_the_champion(
    registry: RunningRegistry, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    async with serving(registry) as (process, client, _):
        await set_split(process, registry, canary=2, canary_percent=50)
        canary_keys = [key for key in (f"k{i}" for i in range(100)) if share_of(MODEL, key) < 50][:5]
        champion_keys = [key for key in (f"k{i}" for i in range(100)) if share_of(MODEL, key) >= 50][:5]
        for key in canary_keys + champion_keys:
            await client.infer(MODEL, [raw_input(dataset.rows[:3])], request_id=key)

        logged = [await asyncio.wait_for(process.logged.get(), 10) for _ in range(10)]
        roles = {event["request_id"]: (event["role"], event["model_version"]) for event in logged}
        assert all(roles[key] == ("canary", 2) for key in canary_keys)
        assert all(roles[key] == ("champion", 1) for key in champion_keys)

        revision = fake(registry).traffic[MODEL].revision
        counts, live = await live_counts(process, revision, 10)
        assert counts == {(1, "champion"): (5, 0), (2, "canary"): (5, 0)}
        assert {(event["model"], event["instance"]) for event in live} == {(MODEL, "test")}

        events, compared = await compared_rows(process, "canary", 15)
        assert {(e["champion_version"], e["challenger_version"]) for e in events} == {(1, 2)}
        assert compared["request_ids"] == [key for key in canary_keys for _ in range(3)]
        rows = np.concatenate([dataset.rows[:3]] * 5)
        assert compared["champion_outputs"] == models[1].labels(rows).astype(float).tolist()
        assert compared["challenger_outputs"] == models[2].labels(rows).astype(float).tolist()


async def test_a_shadow_never_changes_the_answer_and_its_comparisons_are_published(
    registry: RunningRegistry, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    async with serving(registry) as (process, client, _):
        await set_split(process, registry, shadow=2, shadow_percent=100)
        for request in range(8):
            rows = dataset.rows[request * 5 : request * 5 + 5]
            result = await client.infer(MODEL, [raw_input(rows)], request_id=f"r{request}")
            assert result.get_response().model_version == "1"
            assert_answers(result, models[1], rows)  # the champion's answer, untouched

        events, compared = await compared_rows(process, "shadow", 40)
        versions = {
            (e["champion_version"], e["challenger_version"], e["challenger_failures"]) for e in events
        }
        assert versions == {(1, 2, 0)}
        assert compared["request_ids"] == [f"r{request}" for request in range(8) for _ in range(5)]
        assert compared["champion_outputs"] == models[1].labels(dataset.rows[:40]).astype(float).tolist()
        assert compared["challenger_outputs"] == models[2].labels(dataset.rows[:40]).astype(float).tolist()
        counts, live = await live_counts(process, fake(registry).traffic[MODEL].revision, 16)
        assert counts == {(1, "champion"): (8, 0), (2, "shadow"): (8, 0)}
        assert sum(event["shadow_dropped"] for event in live) == 0


async def test_a_canary_that_cannot_load_leaves_the_split_as_it_was(
    registry: RunningRegistry, dataset: Dataset, models: dict[int, TrainedModel]
) -> None:
    fake(registry).add(MODEL, 3, models[1].onnx)
    fake(registry).recorded_sha256[MODEL, 3] = hashlib.sha256(b"what was uploaded").hexdigest()
    async with serving(registry) as (process, client, _):
        await set_split(process, registry, canary=2, canary_percent=100)
        await set_split(process, registry, canary=3, canary_percent=100)
        failure = await asyncio.wait_for(process.load_failed.get(), 10)
        assert (failure["model_version"], failure["reason"], failure["serving_version"]) == (
            3,
            "digest_mismatch",
            1,
        )
        result = await client.infer(MODEL, [raw_input(dataset.rows[:2])])
        assert result.get_response().model_version == "2"  # the previous split still routes


def artifact_of(version: int) -> int:
    """Which trained model a version's artifact is: odd versions 1, even versions 2."""
    return 1 if version % 2 else 2


async def test_more_than_20_split_changes_under_load_fail_no_request(
    registry: RunningRegistry, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    """Closed-loop gRPC clients with routing keys while the canary changes 22 times (two of its
    versions refused: one corrupt, one no model) and a canary is promoted midway; every answer is
    its version's model's answer, and no request fails."""
    registry_fake = fake(registry)
    for version in range(3, 25):
        registry_fake.add(MODEL, version, models[artifact_of(version)].onnx)
    registry_fake.recorded_sha256[MODEL, 9] = hashlib.sha256(b"what was uploaded").hexdigest()
    registry_fake.artifacts[MODEL, 15] = b"\x08\x07 not an onnx model"
    answers: list[tuple[int, Any]] = []
    failures: list[BaseException] = []
    done = asyncio.Event()

    async with serving(registry) as (process, client, _):

        async def keep_asking(worker: int) -> None:
            start = worker * 7
            while not done.is_set():
                rows = dataset.rows[start : start + 1 + (len(answers) + worker) % 9]
                key = f"w{worker}-{len(answers)}"
                try:
                    result = await client.infer(MODEL, [raw_input(rows)], parameters={"routing_key": key})
                    answers.append((start, result))
                except Exception as exc:
                    failures.append(exc)

        clients = [asyncio.create_task(keep_asking(worker)) for worker in range(6)]
        for change, canary in enumerate(range(3, 25)):
            if canary == 12:  # promote the canary of the moment, as a rollout's last step does
                registry_fake.promote(MODEL, 11)
                registry_fake.set_traffic(MODEL)
                await process.promote(MODEL, 11)
            await set_split(process, registry, canary=canary, canary_percent=20 + (change * 13) % 70)
            await asyncio.sleep(0.02)  # let some requests land on each split
        done.set()
        await asyncio.gather(*clients)

        assert failures == []
        versions = set()
        for start, result in answers:
            version = int(result.get_response().model_version)
            versions.add(version)
            rows = dataset.rows[start : start + result.as_numpy("label").shape[0]]
            assert_answers(result, models[artifact_of(version)], rows)
        assert 9 not in versions and 15 not in versions
        assert len(versions) >= 8, sorted(versions)  # the load really overlapped the changes
        assert 1 not in versions or 11 in versions  # the champion moved to 11 midway


async def test_a_canary_failing_what_its_champion_takes_counts_failures_and_malformed_requests_none(
    registry: RunningRegistry, dataset: Dataset, narrow: bytes
) -> None:
    fake(registry).add(MODEL, 3, narrow)  # loads, but takes 29 features where the champion takes 30
    async with serving(registry) as (process, client, _):
        await set_split(process, registry, canary=3, canary_percent=100)
        revision = fake(registry).traffic[MODEL].revision
        for request in range(3):  # malformed for any version: 7 features
            with pytest.raises(triton.InferenceServerException):
                await client.infer(MODEL, [raw_input(dataset.rows[:2, :7])], request_id=f"bad-{request}")
        for request in range(4):
            with pytest.raises(triton.InferenceServerException) as failed:
                await client.infer(MODEL, [raw_input(dataset.rows[:2])], request_id=f"ok-{request}")
            assert failed.value.status() == "StatusCode.INVALID_ARGUMENT"
        answered = await client.infer(MODEL, [raw_input(dataset.rows[:2])], "1")  # named: outside the split
        assert answered.get_response().model_version == "1"

        counts, _ = await live_counts(process, revision, 4, settle=1.0)  # five more reports
        assert counts == {(3, "canary"): (4, 4)}
