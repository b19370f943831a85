"""The KServe V2 REST endpoint end to end: the real service in a subprocess, called over real HTTP
with raw requests (httpx, as curl would) and with tritonclient.http, unchanged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.http import aio as triton_http_aio

from .harness import ServingProcess, serving_client
from .support import MODEL, Dataset, RunningRegistry, TrainedModel

INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
async def served(module_registry: RunningRegistry) -> AsyncIterator[ServingProcess]:
    """One service for the tests that only read; version 1 is the champion throughout."""
    async with serving_client(module_registry) as (serving, _):
        yield serving


@pytest.fixture(scope="module")
async def http(served: ServingProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{served.http_url}", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
async def triton(served: ServingProcess) -> AsyncIterator[Any]:
    client = triton_http_aio.InferenceServerClient(served.http_url)
    try:
        yield client
    finally:
        await client.close()


def json_input(rows: np.ndarray, name: str = "input", datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "shape": list(rows.shape), "datatype": datatype, "data": rows.ravel().tolist()}


def outputs_of(body: dict[str, Any]) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}


def assert_json_answers(body: dict[str, Any], model: TrainedModel, rows: np.ndarray) -> None:
    outputs = outputs_of(body)
    np.testing.assert_array_equal(outputs["label"], model.labels(rows))
    np.testing.assert_allclose(outputs["probabilities"], model.probabilities(rows), atol=1e-5)


# -- health and metadata, raw HTTP ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/v2/health/live", 200, {"live": True}),
        ("/v2/health/ready", 200, {"ready": True}),
        (f"/v2/models/{MODEL}/ready", 200, {"ready": True}),
        (f"/v2/models/{MODEL}/versions/1/ready", 200, {"ready": True}),
        (f"/v2/models/{MODEL}/versions/2/ready", 400, {"ready": False}),  # registered, not loaded
        ("/v2/models/no-such-model/ready", 400, {"ready": False}),
    ],
)
async def test_health_is_200_when_true_and_400_when_false(
    http: httpx.AsyncClient, path: str, status: int, body: dict[str, Any]
) -> None:
    response = await http.get(path)
    assert (response.status_code, response.json()) == (status, body)


async def test_server_metadata(http: httpx.AsyncClient) -> None:
    response = await http.get("/v2")
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["extensions"]) == (
        "cascade-serving",
        ["model_configuration", "statistics", "model_repository"],
    )
    assert body["version"]


@pytest.mark.parametrize("path", [f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/1"])
async def test_model_metadata_names_the_features(
    http: httpx.AsyncClient, dataset: Dataset, path: str
) -> None:
    response = await http.get(path)
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["versions"], body["platform"]) == (MODEL, ["1"], "onnxruntime_onnx")
    (tensor,) = body["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("input", "FP32", [-1, 30])
    assert json.loads(tensor["parameters"]["feature_names"]) == dataset.features
    assert json.loads(tensor["parameters"]["feature_types"]) == ["FP32"] * 30
    assert [(t["name"], t["datatype"], t["shape"]) for t in body["outputs"]] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 2]),
    ]


# -- inference, raw HTTP ---------------------------------------------------------------------------
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
async def test_json_inference_matches_sklearn(
    http: httpx.AsyncClient, models: dict[int, TrainedModel], dataset: Dataset, datatype: str
) -> None:
    rows = dataset.rows[:5]
    response = await http.post(INFER, json={"id": "rest-1", "inputs": [json_input(rows, datatype=datatype)]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["id"], body["model_name"], body["model_version"]) == ("rest-1", MODEL, "1")
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("label", "INT64", [5]),
        ("probabilities", "FP32", [5, 2]),
    ]
    assert_json_answers(body, models[1], rows)


async def test_nested_data_explicit_version_and_output_selection(
    http: httpx.AsyncClient, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    rows = dataset.rows[10:13]
    request = {
        "inputs": [{"name": "input", "shape": [3, 30], "datatype": "FP32", "data": rows.tolist()}],
        "outputs": [{"name": "probabilities"}],
    }
    response = await http.post(f"/v2/models/{MODEL}/versions/1/infer", json=request)
    assert response.status_code == 200
    body = response.json()
    assert [o["name"] for o in body["outputs"]] == ["probabilities"]
    np.testing.assert_allclose(outputs_of(body)["probabilities"], models[1].probabilities(rows), atol=1e-5)


async def test_one_json_tensor_per_feature_answers_as_the_single_tensor(
    http: httpx.AsyncClient, dataset: Dataset
) -> None:
    rows = dataset.rows[40:46]
    single = (await http.post(INFER, json={"inputs": [json_input(rows)]})).json()
    per_feature = [json_input(rows[:, index], name) for index, name in enumerate(dataset.features)]
    response = await http.post(INFER, json={"inputs": per_feature[::-1]})
    assert response.status_code == 200
    assert response.json()["outputs"] == single["outputs"]


async def test_rest_predictions_reach_the_prediction_log(
    served: ServingProcess, http: httpx.AsyncClient, dataset: Dataset
) -> None:
    """The same core as gRPC: REST answers are logged for the monitor, with the feature names."""
    rows = dataset.rows[70:73]
    response = await http.post(INFER, json={"id": "rest-logged", "inputs": [json_input(rows)]})
    assert response.status_code == 200
    async with asyncio.timeout(10):
        event = await served.logged.get()
        while event["request_id"] != "rest-logged":  # earlier tests' requests are logged too
            event = await served.logged.get()
    assert (event["model"], event["model_version"], event["features"]) == (MODEL, 1, dataset.features)
    np.testing.assert_array_equal(np.array(event["inputs"], dtype=np.float32), rows)


async def test_binary_data_extension_both_ways(
    http: httpx.AsyncClient, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    rows = dataset.rows[50:54]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [4, 30],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}],
        }
    ).encode()
    response = await http.post(
        INFER,
        content=header + rows.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200
    split = int(response.headers["inference-header-content-length"])
    body, binary = json.loads(response.content[:split]), response.content[split:]
    label, probabilities = body["outputs"]
    assert label["parameters"] == {"binary_data_size": 4 * 8} and "data" not in label
    np.testing.assert_array_equal(np.frombuffer(binary, "<i8"), models[1].labels(rows))
    np.testing.assert_allclose(
        np.array(probabilities["data"]).reshape(4, 2), models[1].probabilities(rows), atol=1e-5
    )


# -- bad requests, raw HTTP --------------------------------------------------------------------------
def good(dataset: Dataset) -> dict[str, Any]:
    return {"inputs": [json_input(dataset.rows[:2])]}


def with_input(dataset: Dataset, **changes: Any) -> dict[str, Any]:
    request = good(dataset)
    request["inputs"][0].update(changes)
    return request


BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("not-json", b"{", 400, "the body is not JSON"),
    ("not-an-object", b"[1, 2]", 400, "must be a JSON object, not list"),
    ("no-inputs", {"inputs": []}, 400, '"inputs" must be a non-empty list'),
    ("unknown-input", lambda d: with_input(d, name="features"), 400, "unknown input 'features'"),
    ("string-datatype", lambda d: with_input(d, datatype="BYTES"), 400, "has datatype 'BYTES'"),
    ("negative-shape", lambda d: with_input(d, shape=[-1, 30]), 400, "needs a shape"),
    ("too-few-values", lambda d: with_input(d, shape=[3, 30]), 400, "has 60 values, but its shape needs 90"),
    ("wrong-shape", lambda d: with_input(d, shape=[30, 2]), 400, "shape [30, 2], but the model expects"),
    ("text-values", lambda d: with_input(d, data=["a"] * 60), 400, "do not fit its datatype float32"),
    ("numeric-text", lambda d: with_input(d, data=["1.5"] * 60), 400, "do not fit its datatype float32"),
    ("ragged-data", lambda d: with_input(d, data=[[1.0], [1.0, 2.0]]), 400, "data are not 60 numbers"),
    (
        "fractions-for-INT64",
        lambda d: with_input(d, datatype="INT64", data=[0.5] * 60),
        400,
        "do not fit its datatype int64",
    ),
    (
        "past-INT32",
        lambda d: with_input(d, datatype="INT32", data=[2**40] * 60),
        400,
        "do not fit its datatype int32",
    ),
    ("no-data", lambda d: with_input(d, data=None), 400, "needs data"),
    (
        "unknown-output",
        lambda d: {**good(d), "outputs": [{"name": "score"}]},
        400,
        "unknown output(s) ['score']",
    ),
    (
        "binary-past-the-end",
        lambda d: with_input(d, data=None, parameters={"binary_data_size": 240}),
        400,
        "goes past the 0 bytes",
    ),
    (
        "unknown-feature",
        lambda d: {"inputs": [json_input(d.rows[:2, 0], "not a feature")]},
        400,
        "unknown input 'not a feature'",
    ),
    (
        "missing-feature",
        lambda d: {"inputs": [json_input(d.rows[:2, i], n) for i, n in enumerate(d.features[:-1])]},
        400,
        "missing feature(s) ['worst fractal dimension']",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "message"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
async def test_bad_requests_get_400_with_a_json_reason(
    http: httpx.AsyncClient, dataset: Dataset, body: Any, status: int, message: str
) -> None:
    if callable(body):
        body = body(dataset)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await http.post(INFER, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"], response.json()


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v2/models/no-such-model/infer", 404, "model 'no-such-model' is not loaded"),
        ("POST", f"/v2/models/{MODEL}/versions/7/infer", 404, "no loaded version '7'"),
        ("GET", "/v2/models/no-such-model", 404, "model 'no-such-model' is not loaded"),
        ("GET", "/v2/models/no-such-model/config", 404, "is not loaded"),
        ("GET", "/v2/nothing-here", 404, "no endpoint GET /v2/nothing-here"),
        ("GET", INFER, 405, "GET is not allowed"),
    ],
)
async def test_unknown_models_and_paths_get_a_json_error(
    http: httpx.AsyncClient, dataset: Dataset, method: str, path: str, status: int, message: str
) -> None:
    response = await http.request(method, path, json=good(dataset) if method == "POST" else None)
    assert response.status_code == status
    assert message in response.json()["error"]


async def test_binary_header_length_beyond_the_body_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post(INFER, content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert response.status_code == 400
    assert "but the body has 2 bytes" in response.json()["error"]


# -- tritonclient.http, unchanged ------------------------------------------------------------------
async def test_tritonclient_http_health_metadata_and_config(triton: Any, dataset: Dataset) -> None:
    assert await triton.is_server_live()
    assert await triton.is_server_ready()
    assert await triton.is_model_ready(MODEL)
    assert await triton.is_model_ready(MODEL, "1")
    assert not await triton.is_model_ready(MODEL, "2")
    assert not await triton.is_model_ready("no-such-model")
    assert (await triton.get_server_metadata())["name"] == "cascade-serving"
    metadata = await triton.get_model_metadata(MODEL)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("input", "FP32", [-1, 30])
    ]
    config = await triton.get_model_config(MODEL)
    assert (config["name"], config["platform"], config["max_batch_size"]) == (MODEL, "onnxruntime_onnx", 0)
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("input", "TYPE_FP32", [-1, 30])
    ]
    assert json.loads(config["parameters"]["feature_names"]["string_value"]) == dataset.features
    with pytest.raises(triton_http.InferenceServerException, match="not loaded"):
        await triton.get_model_config("no-such-model")


@pytest.mark.parametrize("binary", [True, False])
async def test_tritonclient_http_inference_matches_sklearn(
    triton: Any, models: dict[int, TrainedModel], dataset: Dataset, binary: bool
) -> None:
    rows = dataset.rows[60:67]
    tensor = triton_http.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [
        triton_http.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")
    ]
    result = await triton.infer(MODEL, [tensor], outputs=outputs, request_id=f"http-{binary}")
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == (
        f"http-{binary}",
        MODEL,
        "1",
    )
    np.testing.assert_array_equal(result.as_numpy("label"), models[1].labels(rows))
    np.testing.assert_allclose(result.as_numpy("probabilities"), models[1].probabilities(rows), atol=1e-5)
    # Its defaults: binary inputs, and every output binary (no outputs named).
    default = await triton.infer(MODEL, [tensor])
    np.testing.assert_array_equal(default.as_numpy("label"), models[1].labels(rows))


async def test_tritonclient_http_statistics_count_rest_requests(triton: Any, dataset: Dataset) -> None:
    async def successes() -> int:
        (stats,) = (await triton.get_inference_statistics(MODEL))["model_stats"]
        assert (stats["name"], stats["version"]) == (MODEL, "1")
        return int(stats["inference_stats"]["success"]["count"])

    before = await successes()
    tensor = triton_http.InferInput("input", [3, 30], "FP32")
    tensor.set_data_from_numpy(dataset.rows[:3])
    for _ in range(3):
        await triton.infer(MODEL, [tensor])
    assert await successes() - before == 3
    index = await triton.get_model_repository_index()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [(MODEL, "1", "READY")]


async def test_tritonclient_http_errors_carry_the_reason(triton: Any, dataset: Dataset) -> None:
    tensor = triton_http.InferInput("features", [2, 30], "FP32")
    tensor.set_data_from_numpy(dataset.rows[:2])
    with pytest.raises(triton_http.InferenceServerException, match="unknown input 'features'"):
        await triton.infer(MODEL, [tensor])
    with pytest.raises(triton_http.InferenceServerException, match="is not loaded"):
        await triton.infer("no-such-model", [tensor])


# -- the README's example ----------------------------------------------------------------------------
README = Path(__file__).parents[2] / "README.md"


def readme_curl_commands() -> list[tuple[str, dict[str, Any] | None]]:
    """Each `curl` of the README's REST section: its path, and its JSON body (`-d '...'`) if any."""
    section = README.read_text().split("### Inference over REST (KServe V2)", 1)[1].split("\n### ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for command in block.split("curl -s 127.0.0.1:8000")[1:]:
        path = command.split()[0]
        body = json.loads(command.split("-d '", 1)[1].split("'", 1)[0]) if "-d '" in command else None
        commands.append((path, body))
    return commands


async def test_the_readme_curl_example_runs(
    http: httpx.AsyncClient, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    commands = readme_curl_commands()
    assert [path for path, _ in commands] == [
        "/v2/health/ready",
        "/v2/models/breast_cancer",
        "/v2/models/breast_cancer/infer",
    ]
    for readme_path, body in commands:
        path = readme_path.replace("breast_cancer", MODEL)  # the demo's model; here, the tests' one
        response = await (http.get(path) if body is None else http.post(path, json=body))
        assert response.status_code == 200, response.text
    assert body is not None
    rows = np.array(body["inputs"][0]["data"], dtype=np.float32).reshape(1, 30)
    np.testing.assert_allclose(rows[0], dataset.rows[0])  # the first breast_cancer row
    answer = response.json()
    assert answer["id"] == "3f2c9a"
    assert_json_answers(answer, models[1], rows)
