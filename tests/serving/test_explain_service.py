"""Explain as the real serving service hosts it (the app's wiring, in a subprocess): over gRPC on the
inference port through the SDK's typed client, and over REST (`POST .../explain`), while inference
answers unchanged on the same port."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from cascade.client.calls import RemoteService
from cascade.client.channels import ClientSecurity
from cascade.client.explain import ExplainClient
from cascade.errors import NotFound, PermissionDenied, RemoteFailure

from .harness import ServingProcess, assert_answers, raw_input, serving_client
from .support import MODEL, Dataset, RunningRegistry, TrainedModel


@pytest.fixture(scope="module")
async def served(
    module_registry: RunningRegistry, dataset: Dataset
) -> AsyncIterator[tuple[ServingProcess, Any]]:
    """Version 1 (the champion) carries a background; version 2 does not."""
    background = {"features": dataset.features, "rows": dataset.rows[:30].tolist()}
    module_registry.fake.tags[MODEL, 1]["explain_background"] = json.dumps(background)
    async with serving_client(module_registry) as running:
        yield running


@pytest.fixture(scope="module")
async def explainer(served: tuple[ServingProcess, Any]) -> AsyncIterator[ExplainClient]:
    serving, _ = served
    client = ExplainClient(
        RemoteService("serving", grpc.aio.insecure_channel(serving.url), serving.url), timeout=60
    )
    try:
        yield client
    finally:
        await client.close()


async def test_explain_and_infer_share_the_port(
    served: tuple[ServingProcess, Any],
    explainer: ExplainClient,
    dataset: Dataset,
    models: dict[int, TrainedModel],
) -> None:
    _, triton = served
    rows = dataset.rows[20:22]

    explained = await explainer.explain(MODEL, rows)
    result = await triton.infer(MODEL, [raw_input(rows)])

    assert_answers(result, models[1], rows)
    assert explained.version == 1 and len(explained.rows) == 2
    labels = models[1].labels(rows)
    for row, label in zip(explained.rows, labels, strict=True):
        assert row.class_index == label
        assert abs(row.base_value + sum(row.attributions) - row.output) <= 1e-6


async def test_a_model_or_version_serving_has_not_loaded_is_not_found(
    explainer: ExplainClient, dataset: Dataset
) -> None:
    with pytest.raises(NotFound, match="no-such-model"):
        await explainer.explain("no-such-model", dataset.rows[:1])
    with pytest.raises(NotFound, match="no loaded version '2'"):  # registered, never promoted
        await explainer.explain(MODEL, dataset.rows[:1], version="2")


async def test_rest_explain(served: tuple[ServingProcess, Any], dataset: Dataset) -> None:
    serving, _ = served
    rows = dataset.rows[5:6].astype(np.float64)
    body = {
        "id": "rest-1",
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": rows.tolist()}],
        "parameters": {"output_class": 0},
    }
    async with httpx.AsyncClient(base_url=f"http://{serving.http_url}", timeout=60) as http:
        answer = await http.post(f"/v2/models/{MODEL}/explain", json=body)
        unknown = await http.post("/v2/models/nope/explain", json=body)
        bad = await http.post(f"/v2/models/{MODEL}/explain", json={**body, "inputs": [{"shape": [1, 30]}]})

    assert answer.status_code == 200, answer.text
    explained = answer.json()
    assert (explained["model_name"], explained["model_version"], explained["id"]) == (MODEL, "1", "rest-1")
    [row] = explained["rows"]
    assert row["class_index"] == 0 and len(row["attributions"]) == 30
    assert abs(row["base_value"] + sum(row["attributions"]) - row["output"]) <= 1e-6
    assert unknown.status_code == 404 and "not loaded" in unknown.json()["error"]
    assert bad.status_code == 400 and "FP32 or FP64" in bad.json()["error"]


async def test_with_explanations_off_neither_transport_explains(
    module_registry: RunningRegistry, dataset: Dataset
) -> None:
    serving = await ServingProcess.start(
        module_registry.address, env={"CASCADE_SERVING_EXPLAIN_ENABLED": "false"}
    )
    channel = grpc.aio.insecure_channel(serving.url)
    explainer = ExplainClient(RemoteService("serving", channel, serving.url), timeout=30)
    body = {
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": dataset.rows[0].tolist()}]
    }
    try:
        with pytest.raises(RemoteFailure) as refused:
            await explainer.explain(MODEL, dataset.rows[:1])
        async with httpx.AsyncClient(base_url=f"http://{serving.http_url}", timeout=30) as http:
            answer = await http.post(f"/v2/models/{MODEL}/explain", json=body)
    finally:
        await explainer.close()
        await serving.stop()

    assert refused.value.status is grpc.StatusCode.UNIMPLEMENTED
    assert answer.status_code == 404 and "explanations are off" in answer.json()["error"]


async def test_explain_needs_serving_infer_even_when_inference_is_open(
    module_registry: RunningRegistry, dataset: Dataset, tmp_path: Path
) -> None:
    background = {"features": dataset.features, "rows": dataset.rows[:30].tolist()}
    module_registry.fake.tags[MODEL, 1]["explain_background"] = json.dumps(background)
    tokens = {"client": secrets.token_urlsafe(32), "reader": secrets.token_urlsafe(32)}
    roles = {"client": "serving:infer", "reader": "ingest:read"}
    principals = tmp_path / "principals.toml"
    principals.write_text(
        "".join(
            f'[principals.{name}]\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
            f'roles = ["{roles[name]}"]\n'
            for name, token in tokens.items()
        )
    )
    settings = {
        "CASCADE_SERVING_AUTH_REQUIRED": "true",
        "CASCADE_SERVING_AUTH_PRINCIPALS_FILE": str(principals),
        "CASCADE_SERVING_AUTH_OPEN_INFERENCE": "true",
    }
    serving = await ServingProcess.start(module_registry.address, env=settings)
    body = {
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": dataset.rows[0].tolist()}]
    }
    answers: dict[str, int] = {}
    try:
        async with httpx.AsyncClient(base_url=f"http://{serving.http_url}", timeout=60) as http:
            for _ in range(600):  # polling a remote service: up to 30 s
                if (await http.get(f"/v2/models/{MODEL}/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            answers["infer, anyone"] = (await http.post(f"/v2/models/{MODEL}/infer", json=body)).status_code
            for who in (None, "reader", "client"):
                headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
                response = await http.post(f"/v2/models/{MODEL}/explain", json=body, headers=headers)
                answers[f"explain, {who or 'anyone'}"] = response.status_code
        async with ExplainClient.connect(serving.url, ClientSecurity(token=tokens["reader"])) as reader:
            with pytest.raises(PermissionDenied, match="serving:infer"):
                await reader.explain(MODEL, dataset.rows[:1])
        async with ExplainClient.connect(
            serving.url, ClientSecurity(token=tokens["client"]), timeout=60
        ) as client:
            explained = await client.explain(MODEL, dataset.rows[:1])
    finally:
        await serving.stop()

    assert answers == {
        "infer, anyone": 200,
        "explain, anyone": 401,
        "explain, reader": 403,
        "explain, client": 200,
    }
    assert explained.version == 1
