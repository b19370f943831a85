"""The inference service end to end: the real service in a subprocess, called through tritonclient
(and tritonclient's own generated stubs, for the malformed requests its helpers refuse to build)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .harness import ServingProcess, assert_answers, raw_input, serving_client
from .support import MODEL, Dataset, RunningRegistry, TrainedModel


@pytest.fixture(scope="module")
async def served(module_registry: RunningRegistry) -> AsyncIterator[tuple[ServingProcess, Any]]:
    """One service for the tests that only read; version 1 is the champion throughout."""
    async with serving_client(module_registry) as pair:
        yield pair


@pytest.fixture(scope="module")
async def stub(served: tuple[ServingProcess, Any]) -> AsyncIterator[Any]:
    """A raw OIP stub (tritonclient's), for requests the tritonclient helpers would not build."""
    async with grpc.aio.insecure_channel(served[0].url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


# -- health and metadata ---------------------------------------------------------------------------
async def test_server_live_ready_and_metadata(served: tuple[ServingProcess, Any]) -> None:
    _, client = served
    assert await client.is_server_live()
    assert await client.is_server_ready()
    metadata = await client.get_server_metadata()
    assert metadata.name == "cascade-serving"
    assert list(metadata.extensions) == ["model_configuration", "statistics", "model_repository"]
    assert metadata.version


async def test_health_reports_the_inference_service(served: tuple[ServingProcess, Any]) -> None:
    async with grpc.aio.insecure_channel(served[0].url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", MODEL):  # per model: its name
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_model_metadata_describes_the_session(served: tuple[ServingProcess, Any]) -> None:
    _, client = served
    metadata = await client.get_model_metadata(MODEL)
    assert (metadata.name, list(metadata.versions), metadata.platform) == (MODEL, ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("input", "FP32", [-1, 30])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 2]),
    ]


async def test_metadata_and_config_name_the_features(
    served: tuple[ServingProcess, Any], dataset: Dataset
) -> None:
    _, client = served
    config = (await client.get_model_config(MODEL)).config
    assert json.loads(config.parameters["feature_names"].string_value) == dataset.features
    assert json.loads(config.parameters["feature_types"].string_value) == ["FP32"] * 30
    # ModelMetadata's input carries them as OIP tensor parameters; tritonclient's stubs predate the
    # field, so they keep it as an unknown field: its bytes are the names, in column order.
    (tensor,) = (await client.get_model_metadata(MODEL)).inputs
    assert json.dumps(dataset.features).encode() in tensor.SerializeToString()


async def test_model_ready_only_for_loaded_versions(served: tuple[ServingProcess, Any]) -> None:
    _, client = served
    assert await client.is_model_ready(MODEL)
    assert await client.is_model_ready(MODEL, "1")
    assert not await client.is_model_ready(MODEL, "2")  # registered, never champion: not loaded
    assert not await client.is_model_ready("no-such-model")


# -- Triton extensions -----------------------------------------------------------------------------
async def test_model_config_describes_the_session(served: tuple[ServingProcess, Any]) -> None:
    _, client = served
    config = (await client.get_model_config(MODEL)).config
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        MODEL,
        "onnxruntime_onnx",
        "onnxruntime",
        0,
    )
    data_type = triton.model_config_pb2.DataType.Name
    assert [(i.name, data_type(i.data_type), list(i.dims)) for i in config.input] == [
        ("input", "TYPE_FP32", [-1, 30])
    ]
    assert [(o.name, data_type(o.data_type), list(o.dims)) for o in config.output] == [
        ("label", "TYPE_INT64", [-1]),
        ("probabilities", "TYPE_FP32", [-1, 2]),
    ]
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (triton.model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)
    ]
    assert (await client.get_model_config(MODEL, "1")).config.name == MODEL
    with pytest.raises(triton.InferenceServerException, match="not loaded") as unknown:
        await client.get_model_config("no-such-model")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


async def test_model_statistics_count_rows_executions_and_failures(
    served: tuple[ServingProcess, Any], stub: Any, dataset: Dataset
) -> None:
    _, client = served

    async def statistics() -> Any:
        (stats,) = (await client.get_inference_statistics(MODEL)).model_stats
        assert (stats.name, stats.version) == (MODEL, "1")
        return stats

    before = await statistics()
    for rows in (1, 5, 7):
        await client.infer(MODEL, [raw_input(dataset.rows[:rows])])
    bad = good_request(dataset)
    set_input(shape=[30, 5])(bad)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.ModelInfer(bad)
    after = await statistics()

    assert after.inference_count - before.inference_count == 13
    assert after.execution_count - before.execution_count == 3
    success, fail = after.inference_stats.success, after.inference_stats.fail
    assert success.count - before.inference_stats.success.count == 3
    assert fail.count - before.inference_stats.fail.count == 1
    assert success.ns > before.inference_stats.success.ns and fail.ns > before.inference_stats.fail.ns
    infer = after.inference_stats.compute_infer
    assert infer.count == success.count and 0 < infer.ns <= success.ns
    assert after.last_inference > 0 and after.last_inference >= before.last_inference
    # No name: every model; an unknown one: NOT_FOUND.
    everything = (await client.get_inference_statistics()).model_stats
    assert [(s.name, s.version) for s in everything] == [(MODEL, "1")]
    with pytest.raises(triton.InferenceServerException) as unknown:
        await client.get_inference_statistics("no-such-model")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


async def test_repository_index_lists_loaded_versions(served: tuple[ServingProcess, Any]) -> None:
    _, client = served
    index = await client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [(MODEL, "1", "READY")]


# -- inference -------------------------------------------------------------------------------------
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
async def test_raw_batch_matches_sklearn(
    served: tuple[ServingProcess, Any], models: dict[int, TrainedModel], dataset: Dataset, datatype: str
) -> None:
    _, client = served
    rows = dataset.rows[:5].astype(triton.triton_to_np_dtype(datatype))
    result = await client.infer(MODEL, [raw_input(rows, datatype)], request_id=f"raw-{datatype}")
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == (f"raw-{datatype}", MODEL, "1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("label", "INT64", [5]),
        ("probabilities", "FP32", [5, 2]),
    ]
    assert_answers(result, models[1], rows)


@pytest.mark.parametrize(("datatype", "field"), [("FP32", "fp32_contents"), ("FP64", "fp64_contents")])
async def test_typed_contents_match_sklearn(
    stub: Any, models: dict[int, TrainedModel], dataset: Dataset, datatype: str, field: str
) -> None:
    rows = dataset.rows[5:10]
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype=datatype, shape=[5, 30])
    getattr(tensor.contents, field).extend(rows.ravel().tolist())
    response = await stub.ModelInfer(service_pb2.ModelInferRequest(model_name=MODEL, inputs=[tensor]))
    assert_answers(triton.InferResult(response), models[1], rows)


async def test_only_the_requested_outputs_in_the_requested_order(
    served: tuple[ServingProcess, Any], dataset: Dataset
) -> None:
    _, client = served
    rows = dataset.rows[:5]
    for names in (["probabilities", "label"], ["probabilities"]):
        outputs = [triton.InferRequestedOutput(name) for name in names]
        result = await client.infer(MODEL, [raw_input(rows)], outputs=outputs)
        assert [output.name for output in result.get_response().outputs] == names


def feature_inputs(rows: np.ndarray, names: list[str], shape: str = "[-1]") -> list[triton.InferInput]:
    """One tensor per feature, `[rows]` or `[rows, 1]`, as KServe V2 lets a client send them."""
    tensors = []
    for index, name in enumerate(names):
        column = np.ascontiguousarray(rows[:, index] if shape == "[-1]" else rows[:, index : index + 1])
        tensor = triton.InferInput(name, list(column.shape), "FP32")
        tensor.set_data_from_numpy(column)
        tensors.append(tensor)
    return tensors


@pytest.mark.parametrize("shape", ["[-1]", "[-1, 1]"])
async def test_one_tensor_per_feature_answers_as_the_single_tensor(
    served: tuple[ServingProcess, Any], models: dict[int, TrainedModel], dataset: Dataset, shape: str
) -> None:
    _, client = served
    rows = dataset.rows[30:37]
    single = await client.infer(MODEL, [raw_input(rows)])
    # Sent in reverse order: serving puts each back in its column.
    tensors = feature_inputs(rows, dataset.features, shape)[::-1]
    per_feature = await client.infer(MODEL, tensors)
    for output in ("label", "probabilities"):
        np.testing.assert_array_equal(per_feature.as_numpy(output), single.as_numpy(output))
    assert_answers(per_feature, models[1], rows)


async def test_bad_feature_tensors_are_refused_naming_the_feature(
    served: tuple[ServingProcess, Any], dataset: Dataset
) -> None:
    _, client = served
    rows = dataset.rows[:4]
    tensors = feature_inputs(rows, dataset.features)
    renamed = feature_inputs(rows, [*dataset.features[:-1], "not a feature"])
    too_wide = triton.InferInput(dataset.features[0], [4, 2], "FP32")
    too_wide.set_data_from_numpy(np.ascontiguousarray(rows[:, :2]))
    short = triton.InferInput(dataset.features[0], [3], "FP32")
    short.set_data_from_numpy(np.ascontiguousarray(rows[:3, 0]))
    for inputs, message in [
        (renamed, "unknown input 'not a feature'"),
        (tensors[:-1], f"missing feature(s) [{dataset.features[-1]!r}]"),
        ([*tensors, tensors[0]], f"feature {dataset.features[0]!r} is given twice"),
        ([too_wide, *tensors[1:]], f"feature {dataset.features[0]!r} has shape [4, 2]"),
        ([*tensors[1:], short], f"feature {dataset.features[0]!r} has 3 rows, but the first feature has 4"),
        ([tensors[0], raw_input(rows)], "unknown input 'input'"),
    ]:
        with pytest.raises(triton.InferenceServerException) as refused:
            await client.infer(MODEL, inputs)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert message in (refused.value.message() or ""), refused.value.message()


async def test_explicit_version(served: tuple[ServingProcess, Any], dataset: Dataset) -> None:
    _, client = served
    result = await client.infer(MODEL, [raw_input(dataset.rows[:1])], model_version="1")
    assert result.get_response().model_version == "1"


async def test_predictions_are_logged_with_feature_names(
    served: tuple[ServingProcess, Any], models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    serving, client = served
    rows = dataset.rows[20:25]
    await client.infer(MODEL, [raw_input(rows)], request_id="to-be-logged")
    async with asyncio.timeout(10):
        event = await serving.logged.get()
        while event["request_id"] != "to-be-logged":  # earlier tests' requests are logged too
            event = await serving.logged.get()
    assert (event["subject"], event["model"], event["model_version"]) == (MODEL, MODEL, 1)
    assert event["source"] == "cascade/serving"
    assert event["features"] == dataset.features  # from the version's "features" tag
    np.testing.assert_array_equal(np.array(event["inputs"], dtype=np.float32), rows)
    assert event["outputs"] == models[1].labels(rows).astype(float).tolist()


# -- bad requests ----------------------------------------------------------------------------------
def good_request(dataset: Dataset) -> Any:
    rows = dataset.rows[:5]
    return service_pb2.ModelInferRequest(
        model_name=MODEL,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[5, 30])],
        raw_input_contents=[rows.tobytes()],
    )


def set_model(name: str) -> Callable[[Any], None]:
    return lambda request: setattr(request, "model_name", name)


def set_version(version: str) -> Callable[[Any], None]:
    return lambda request: setattr(request, "model_version", version)


def set_input(**changes: Any) -> Callable[[Any], None]:
    def change(request: Any) -> None:
        for name, value in changes.items():
            if name == "shape":
                del request.inputs[0].shape[:]
                request.inputs[0].shape.extend(value)
            else:
                setattr(request.inputs[0], name, value)

    return change


def drop_inputs(request: Any) -> None:
    del request.inputs[:]
    del request.raw_input_contents[:]


def shorten_raw(request: Any) -> None:
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]


def typed_too_few(request: Any) -> None:
    del request.raw_input_contents[:]
    request.inputs[0].contents.fp32_contents.extend([1.0] * 10)


def ask_unknown_output(request: Any) -> None:
    request.outputs.add(name="score")


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (set_model("no-such-model"), grpc.StatusCode.NOT_FOUND, "model 'no-such-model' is not loaded"),
        (set_version("7"), grpc.StatusCode.NOT_FOUND, "no loaded version '7'"),
        (set_version("latest"), grpc.StatusCode.NOT_FOUND, "no loaded version 'latest'"),
        (drop_inputs, grpc.StatusCode.INVALID_ARGUMENT, "missing input(s) ['input']"),
        (set_input(name="features"), grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'features'"),
        (set_input(shape=[30, 5]), grpc.StatusCode.INVALID_ARGUMENT, "shape [30, 5], but the model expects"),
        (set_input(datatype="BYTES"), grpc.StatusCode.INVALID_ARGUMENT, "has datatype 'BYTES'"),
        (shorten_raw, grpc.StatusCode.INVALID_ARGUMENT, "has 596 bytes, but shape [5, 30] of FP32 needs 600"),
        (typed_too_few, grpc.StatusCode.INVALID_ARGUMENT, "fp32_contents has 10 values, but shape [5, 30]"),
        (ask_unknown_output, grpc.StatusCode.INVALID_ARGUMENT, "unknown output(s) ['score']"),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "non-numeric-version",
        "missing-input",
        "unknown-input",
        "wrong-shape",
        "wrong-datatype",
        "wrong-byte-length",
        "wrong-value-count",
        "unknown-output",
    ],
)
async def test_bad_requests_are_refused_with_a_reason(
    stub: Any, dataset: Dataset, change: Callable[[Any], None], code: grpc.StatusCode, message: str
) -> None:
    request = good_request(dataset)
    change(request)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ModelInfer(request)
    assert refused.value.code() == code
    assert message in (refused.value.details() or "")


async def test_the_server_still_answers_after_bad_requests(stub: Any, dataset: Dataset) -> None:
    response = await stub.ModelInfer(good_request(dataset))
    assert response.model_version == "1"


# -- hot swap --------------------------------------------------------------------------------------
async def test_hot_swap_under_load_fails_no_request(
    registry: RunningRegistry, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    rows = dataset.rows[:5]
    answers: list[triton.InferResult] = []
    failures: list[BaseException] = []
    done = asyncio.Event()

    async with serving_client(registry) as (serving, client):

        async def keep_asking() -> None:
            while not done.is_set():
                try:
                    answers.append(await client.infer(MODEL, [raw_input(rows)]))
                except Exception as exc:
                    failures.append(exc)

        workers = [asyncio.create_task(keep_asking()) for _ in range(8)]
        await asyncio.sleep(0.5)
        registry.fake.promote(MODEL, 2)
        await serving.promote(MODEL, 2)  # returns once the service has swapped
        await asyncio.sleep(0.5)
        done.set()
        await asyncio.gather(*workers)

        assert failures == []
        by_version = {"1": 0, "2": 0}
        for result in answers:
            version = result.get_response().model_version
            by_version[version] += 1
            assert_answers(result, models[int(version)], rows)
        assert by_version["1"] > 0 and by_version["2"] > 0, by_version

        # The new champion answers by default; the old version stays addressable explicitly.
        latest = await client.infer(MODEL, [raw_input(rows)])
        assert latest.get_response().model_version == "2"
        old = await client.infer(MODEL, [raw_input(rows)], model_version="1")
        assert_answers(old, models[1], rows)
        assert list((await client.get_model_metadata(MODEL)).versions) == ["1", "2"]

        # A repeated promotion is harmless: nothing is downloaded again.
        downloads = registry.fake.downloads
        await serving.promote(MODEL, 2)
        assert registry.fake.downloads == downloads


async def test_a_refused_version_is_reported_and_the_old_one_keeps_serving(
    registry: RunningRegistry, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    rows = dataset.rows[:5]
    async with serving_client(registry) as (serving, client):
        registry.fake.promote(MODEL, 2)
        registry.fake.recorded_sha256[MODEL, 2] = "0" * 64  # corrupt in storage
        await serving.promote(MODEL, 2)
        event = await asyncio.wait_for(serving.load_failed.get(), 10)
        assert (event["model"], event["model_version"], event["reason"]) == (MODEL, 2, "digest_mismatch")
        assert (event["serving_version"], event["instance"]) == (1, "test")
        assert "sha256" in event["detail"]

        assert_answers(await client.infer(MODEL, [raw_input(rows)]), models[1], rows)
        index = await client.get_model_repository_index()
        assert [(m.name, m.version, m.state) for m in index.models] == [
            (MODEL, "1", "READY"),
            (MODEL, "2", "UNAVAILABLE"),
        ]
        assert index.models[1].reason.startswith("digest_mismatch: ")
        ready_only = await client.get_model_repository_index()
        assert len(ready_only.models) == 2  # tritonclient never sets `ready`; the stub does below
        async with grpc.aio.insecure_channel(serving.url) as channel:
            raw = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            only = await raw.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
            assert [(m.version, m.state) for m in only.models] == [("1", "READY")]
