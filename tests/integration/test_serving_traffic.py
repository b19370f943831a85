"""Serving follows a traffic split set in the registry, on the real stack (real Kafka, real gRPC, the
six service processes): a canary set with SetTraffic answers the requests whose routing key falls in
its share, over tritonclient unchanged, while the champion answers the others; serving reports both
versions' requests on live-traffic.v1 and the champion's mirror of the canary's answers on
predictions-compared.v1; then a shadow scores beside the champion without ever answering."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaConsumer

from cascade import Client
from cascade.cli.demo import write_batches
from cascade.client.registry import RegistryClient
from cascade.events import Event, LiveTrafficReported, PredictionsCompared, Topics
from cascade.services.serving.traffic import share_of
from cascade.stack import SERVICES, Stack
from tests.integration.support import triton_client, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOPICS = Topics("it")
TIMEOUT = 120.0
E = TypeVar("E", bound=Event)
T = TypeVar("T")


@pytest.fixture(scope="module")
def trained(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """A model whose v1 and v2 were both trained by the stack and served, v2 now champion; and rows
    to ask it about (the demo's probe rows)."""
    name = f"serving_traffic_{uuid.uuid4().hex[:6]}"
    batches = write_batches(Path(tmp_path_factory.mktemp("batches")))
    services = {service: stack.address(service) for service in SERVICES}
    with Client(services, security=stack.client_security) as client:
        for batch, expected in ((batches.first, 1), (batches.second, 2)):
            upload = client.upload(batch, name)
            assert client.follow(upload.dataset_version, name, wait_seconds=300).version == expected
    return name, batches.probe_features[:4]


@pytest.fixture
def serving(stack: Stack) -> Iterator[tuple[triton.InferenceServerClient, dict[str, str]]]:
    client, headers = triton_client(stack)
    try:
        yield client, headers
    finally:
        client.close()


def registry(stack: Stack, use: Callable[[RegistryClient], Awaitable[T]]) -> T:
    async def run() -> T:
        async with RegistryClient.connect(
            stack.address("registry"), stack.client_security, timeout=20
        ) as client:
            return await use(client)

    return asyncio.run(run())


def answering_version(
    serving: tuple[triton.InferenceServerClient, dict[str, str]], model: str, rows: np.ndarray, key: str
) -> str:
    client, headers = serving
    request = triton.InferInput("input", list(rows.shape), "FP32")
    request.set_data_from_numpy(rows)
    result = client.infer(model, [request], parameters={"routing_key": key}, headers=headers)
    return str(result.get_response().model_version)


def events(stack: Stack, event_type: type[E], model: str) -> list[E]:
    """Every event of `event_type` about `model` on its real topic, read from the beginning."""

    async def read() -> list[E]:
        consumer = AIOKafkaConsumer(
            TOPICS.for_event(event_type),
            bootstrap_servers=stack.address("kafka"),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=3000)
            while more := await consumer.getmany(timeout_ms=1000):
                for partition, records in more.items():
                    batches.setdefault(partition, []).extend(records)
        finally:
            await consumer.stop()
        ours = [r for records in batches.values() for r in records if r.key == model.encode()]
        return [event_type.model_validate_json(r.value) for r in sorted(ours, key=lambda r: r.timestamp)]

    return asyncio.run(read())


def test_a_canary_set_in_the_registry_answers_its_share_and_is_reported_on_kafka(
    stack: Stack,
    trained: tuple[str, np.ndarray],
    serving: tuple[triton.InferenceServerClient, dict[str, str]],
) -> None:
    model, rows = trained
    traffic = registry(
        stack,
        lambda r: r.set_traffic(
            model, canary_version=1, canary_percent=40, actor="tests", reason="canary v1"
        ),
    )
    assert (traffic.champion_version, traffic.canary_version, traffic.canary_percent) == (2, 1, 40.0)
    keys = [f"customer-{i}" for i in range(40)]
    canary_keys = [key for key in keys if share_of(model, key) < 40]
    assert canary_keys and len(canary_keys) < len(keys)

    # Serving follows the registry (ModelTrafficChanged, then GetTraffic): wait for the first canary answer.
    wait_for(
        lambda: answering_version(serving, model, rows, canary_keys[0]) == "1" or None,
        TIMEOUT,
        "serving to route to the canary",
    )
    for _ in range(3):  # sticky: each key keeps its side of the split
        for key in keys:
            assert answering_version(serving, model, rows, key) == ("1" if key in canary_keys else "2"), key

    def reported() -> dict[tuple[int, str], int] | None:
        counts: dict[tuple[int, str], int] = {}
        for event in events(stack, LiveTrafficReported, model):
            if event.traffic_revision == traffic.revision:
                for version in event.versions:
                    counts[version.version, version.role] = counts.get((version.version, version.role), 0)
                    counts[version.version, version.role] += version.requests
        wanted = {(1, "canary"): 3 * len(canary_keys), (2, "champion"): 3 * (len(keys) - len(canary_keys))}
        return counts if all(counts.get(k, 0) >= n for k, n in wanted.items()) else None

    counts = wait_for(reported, TIMEOUT, "serving to report both versions' requests")
    assert set(counts) == {(1, "canary"), (2, "champion")}

    def mirrored() -> list[PredictionsCompared] | None:
        compared = [e for e in events(stack, PredictionsCompared, model) if e.challenger_role == "canary"]
        rows_compared = sum(len(e.request_ids) for e in compared)
        return compared if rows_compared >= 3 * len(canary_keys) * len(rows) else None

    compared = wait_for(mirrored, TIMEOUT, "serving to publish the canary's comparisons")
    assert {(e.champion_version, e.challenger_version) for e in compared} == {(2, 1)}
    assert all(len(e.champion_outputs) == len(e.challenger_outputs) == len(e.request_ids) for e in compared)


def test_a_shadow_scores_beside_the_champion_and_never_answers(
    stack: Stack,
    trained: tuple[str, np.ndarray],
    serving: tuple[triton.InferenceServerClient, dict[str, str]],
) -> None:
    model, rows = trained
    registry(
        stack,
        lambda r: r.set_traffic(
            model, shadow_version=1, shadow_percent=100, actor="tests", reason="shadow v1"
        ),
    )
    request_key = uuid.uuid4().hex

    def shadowed() -> list[PredictionsCompared] | None:
        assert answering_version(serving, model, rows, request_key) == "2"  # never the shadow
        compared = [e for e in events(stack, PredictionsCompared, model) if e.challenger_role == "shadow"]
        return compared or None

    compared = wait_for(shadowed, TIMEOUT, "the shadow's comparisons on Kafka")
    assert {(e.champion_version, e.challenger_version) for e in compared} == {(2, 1)}
    assert all(e.challenger_failures == 0 for e in compared)
    for _ in range(20):
        assert answering_version(serving, model, rows, uuid.uuid4().hex) == "2"
    registry(stack, lambda r: r.set_traffic(model, actor="tests", reason="done"))
