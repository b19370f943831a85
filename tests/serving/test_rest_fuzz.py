"""Fuzzing serving's REST endpoint over real HTTP: Hypothesis-generated inference bodies (JSON of any
shape, requests almost right in one or more fields, bytes that are not JSON, wrong binary header
lengths) against the real service in a subprocess. Asserted: a client's mistake is never a 5xx,
every refusal is a JSON `{"error": ...}`, and the service still answers a good request afterwards.

The budget is fixed and the generation derandomized, so CI runs the same inputs every time:
CASCADE_FUZZ_REST_REQUESTS (default 300).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import ServingProcess, serving_client
from .support import MODEL, Dataset, RunningRegistry

pytestmark = pytest.mark.slow

REQUESTS = int(os.environ.get("CASCADE_FUZZ_REST_REQUESTS", "300"))
PATHS = [f"/v2/models/{MODEL}/infer", f"/v2/models/{MODEL}/versions/1/infer", "/v2/models/nope/infer"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=40,
)
sizes = st.integers(min_value=-3, max_value=40) | st.sampled_from([0, 2**31, 2**63 - 1, 2**64])
names = st.sampled_from(["input", "mean radius", "worst texture", "label", ""]) | st.text(max_size=12)
datatypes = st.sampled_from(["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES", "FP16", "fp32"]) | st.text(
    max_size=6
)
tensor = st.fixed_dictionaries(
    {
        "name": names | json_values,
        "shape": st.lists(sizes, max_size=3) | json_values,
        "datatype": datatypes | json_values,
    },
    optional={
        "data": st.lists(st.floats(width=32) | st.integers() | st.booleans(), max_size=90) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": sizes | json_values}),
    },
)
request_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=4) | json_values},
    optional={
        "id": st.text(max_size=8) | json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": names}), max_size=3) | json_values,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "x"]), json_values),
    },
)


def good_request(rows: int) -> dict[str, Any]:
    data = [float(value % 7) for value in range(rows * 30)]
    return {"inputs": [{"name": "input", "shape": [rows, 30], "datatype": "FP32", "data": data}]}


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A good request with one field (of the request, its input or an output) changed or removed."""
    request = good_request(draw(st.integers(min_value=1, max_value=3)))
    tensor = request["inputs"][0]
    target = draw(st.sampled_from([request, tensor, {}]))
    if not target:
        target = {"name": draw(names)}
        request["outputs"] = [target]
    key = draw(
        st.sampled_from(["inputs", "outputs", "id", "parameters", "name", "shape", "datatype", "data"])
    )
    if draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = draw(json_values | names | st.lists(sizes, max_size=3))
    return request


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers): a good request, one changed in a field, a generated request, JSON of
    any shape or raw bytes, sometimes with an Inference-Header-Content-Length that may not fit."""
    kind = draw(st.sampled_from(["good", "mutated", "request", "json", "bytes"]))
    if kind == "bytes":
        body = draw(st.binary(max_size=200))
    else:
        strategy = {
            "good": st.integers(min_value=1, max_value=3).map(good_request),
            "mutated": mutated_requests(),
            "request": request_bodies,
            "json": json_values,
        }[kind]
        body = json.dumps(draw(strategy)).encode()
    headers = {"Content-Type": "application/json"}
    if draw(st.booleans()):
        length = draw(
            st.integers(min_value=0, max_value=len(body) + 5).map(str)
            | st.text("0123456789-+x.", min_size=1, max_size=4)
        )
        headers["Inference-Header-Content-Length"] = length
        body += draw(st.binary(max_size=64))
    return draw(st.sampled_from(PATHS)), body, headers


@pytest.fixture(scope="module")
async def served(module_registry: RunningRegistry) -> AsyncIterator[ServingProcess]:
    async with serving_client(module_registry) as (serving, _):
        yield serving


async def test_no_request_body_gets_a_server_error(served: ServingProcess, dataset: Dataset) -> None:
    statuses: collections.Counter[int] = collections.Counter()
    # Hypothesis drives a blocking client from a thread: this loop must keep reading the serving
    # process's output (its prediction log), or the process blocks writing to a full pipe.
    await asyncio.to_thread(fuzz, served, dataset, statuses)
    print(f"REST fuzz: {sum(statuses.values())} requests, by status {dict(sorted(statuses.items()))}")
    assert statuses[200] > 0 and statuses[400] > 0 and statuses[404] > 0


def fuzz(served: ServingProcess, dataset: Dataset, statuses: collections.Counter[int]) -> None:
    with httpx.Client(base_url=f"http://{served.http_url}", timeout=30) as http:

        @settings(
            max_examples=REQUESTS,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(http_requests())
        def send(request: tuple[str, bytes, dict[str, str]]) -> None:
            path, body, headers = request
            response = http.post(path, content=body, headers=headers)
            statuses[response.status_code] += 1
            assert response.status_code < 500, (request, response.text)
            if response.status_code != 200:
                answer: Any = response.json()
                assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer

        send()
        good = {
            "inputs": [
                {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": dataset.rows[0].tolist()}
            ]
        }
        assert http.post(PATHS[0], json=good).status_code == 200  # still answering
