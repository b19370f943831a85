"""Serving's Explain (cascade.services.serving.explain): a served version's attributions, computed in
the explainer's own lower-priority processes, with every refusal's status; and the same over a real
gRPC server through the SDK's typed client.

The registry is the fake of support.py speaking the real protocol; the model repository, the
explainer's process pool and cascade.explain are the real ones."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cascade.client.calls import RemoteService
from cascade.client.explain import ExplainClient
from cascade.errors import CascadeError, FailedPrecondition, InvalidArgument, NotFound
from cascade.services.serving.explain import (
    BACKGROUND_TAG,
    ExplainBusy,
    ExplainCore,
    ExplainDeadline,
    ExplainLimits,
    ExplainPool,
    ExplainQuery,
    ExplainSubject,
    RegistrySubjects,
    parse_background,
    register,
    rows_of,
)
from cascade.services.serving.registry_client import RegistryModelSource
from cascade.services.serving.repository import LoadedModel, ModelRepository
from cascade.stubs.cascade.explain.v1 import explain_pb2 as pb

from .support import MODEL, Dataset, RunningRegistry, TrainedModel

BARE = "bare"  # a model whose version has no explanation background
NEURAL = "neural"  # a model only KernelSHAP explains (no exact path for a neural network)


def _neural_onnx(dataset: Dataset) -> bytes:
    labels = load_breast_cancer().target
    pipeline = make_pipeline(
        StandardScaler(), MLPClassifier((8,), solver="lbfgs", max_iter=2000, random_state=0)
    )
    pipeline.fit(dataset.rows, labels)
    onnx = convert_sklearn(
        pipeline,
        initial_types=[("input", FloatTensorType([None, dataset.rows.shape[1]]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
    )
    return onnx.SerializeToString()


def _background_tag(dataset: Dataset, rows: int = 40) -> str:
    return json.dumps({"features": dataset.features, "rows": dataset.rows[:rows].tolist()})


@dataclass
class Explaining:
    core: ExplainCore
    repository: ModelRepository
    registry: RunningRegistry


@pytest.fixture(scope="module")
async def explaining(
    module_registry: RunningRegistry, models: dict[int, TrainedModel], dataset: Dataset
) -> AsyncIterator[Explaining]:
    """Version 1 of MODEL served, tagged with a background; BARE served without one."""
    fake = module_registry.fake
    fake.tags[MODEL, 1][BACKGROUND_TAG] = _background_tag(dataset)
    fake.add(BARE, 1, models[1].onnx, {"features": json.dumps(dataset.features)})
    fake.promote(BARE, 1)
    fake.add(
        NEURAL,
        1,
        _neural_onnx(dataset),
        {"features": json.dumps(dataset.features), BACKGROUND_TAG: _background_tag(dataset, 10)},
    )
    fake.promote(NEURAL, 1)
    repository = ModelRepository(RegistryModelSource(module_registry.address))
    await repository.sync_all()
    core = ExplainCore(
        repository,
        RegistrySubjects(module_registry.address),
        ExplainPool(workers=1, nice_increment=5),
        ExplainLimits(max_rows=5, max_evaluations=2_000_000, deadline_seconds=60.0, max_concurrent=2),
    )
    try:
        yield Explaining(core, repository, module_registry)
    finally:
        await core.close()


def _query(rows: np.ndarray, model: str = MODEL) -> ExplainQuery:
    return ExplainQuery(model=model, version="", rows=rows, output_class=None, budget=pb.ExplainBudget())


async def test_attributions_add_up_to_the_served_output(
    explaining: Explaining, dataset: Dataset, models: dict[int, TrainedModel]
) -> None:
    rows = dataset.rows[100:103].astype(np.float64)

    model, explanation = await explaining.core.explain(_query(rows))

    assert (model.name, model.version) == (MODEL, 1)
    assert explanation.features == dataset.features
    assert explanation.attributions.shape == (3, len(dataset.features))
    np.testing.assert_allclose(
        explanation.base_values + explanation.attributions.sum(axis=1), explanation.outputs, atol=1e-6
    )
    # Each row's predicted class is what is explained, and its output is the served model's.
    labels = models[1].labels(rows)
    np.testing.assert_array_equal(explanation.class_indices, labels)
    probabilities = models[1].probabilities(rows)[np.arange(3), labels]
    if explanation.output_space == "probability":
        np.testing.assert_allclose(explanation.outputs, probabilities, atol=1e-5)
    else:  # the log-odds of the explained class
        assert explanation.output_space == "margin"
        np.testing.assert_allclose(
            explanation.outputs, np.log(probabilities / (1 - probabilities)), rtol=1e-4, atol=1e-4
        )


async def test_a_chosen_class_is_explained(explaining: Explaining, dataset: Dataset) -> None:
    rows = dataset.rows[:2].astype(np.float64)
    query = ExplainQuery(MODEL, "", rows, output_class=0, budget=pb.ExplainBudget())

    _, explanation = await explaining.core.explain(query)

    assert list(explanation.class_indices) == [0, 0]


async def test_the_explainer_runs_in_its_own_lower_priority_process(
    explaining: Explaining, dataset: Dataset
) -> None:
    await explaining.core.explain(_query(dataset.rows[:1].astype(np.float64)))

    workers = list(explaining.core.pool._pool()._processes.values())
    assert workers and all(worker.pid != os.getpid() for worker in workers)
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert all(os.getpriority(os.PRIO_PROCESS, worker.pid) == min(mine + 5, 19) for worker in workers)


class _RecordingPool(ExplainPool):
    """The real pool, noting the size of the artifact each job carries."""

    def __init__(self) -> None:
        super().__init__(workers=1, nice_increment=0)
        self.artifact_sizes: list[int] = []

    def submit(self, job: Any) -> Any:
        self.artifact_sizes.append(len(job.subject.onnx))
        return super().submit(job)


async def test_the_artifact_travels_to_a_worker_only_when_it_lacks_the_explainer(
    explaining: Explaining, dataset: Dataset, models: dict[int, TrainedModel]
) -> None:
    pool = _RecordingPool()
    core = ExplainCore(explaining.repository, explaining.core.subjects, pool)
    rows = dataset.rows[:1].astype(np.float64)
    try:
        first = (await core.explain(_query(rows)))[1]
        second = (await core.explain(_query(rows)))[1]
    finally:
        await pool.close()

    assert pool.artifact_sizes == [0, len(models[1].onnx), 0]
    np.testing.assert_array_equal(first.attributions, second.attributions)


async def test_a_dead_worker_costs_one_request_at_most(explaining: Explaining, dataset: Dataset) -> None:
    rows = dataset.rows[:1].astype(np.float64)
    await explaining.core.explain(_query(rows))
    for worker in list(explaining.core.pool._pool()._processes.values()):
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)

    outcomes = []
    for _ in range(2):
        try:
            outcomes.append((await explaining.core.explain(_query(rows)))[1].outputs.shape)
        except CascadeError as error:
            outcomes.append(error.status)

    assert outcomes[-1] == (1,), outcomes  # a new pool answers
    assert outcomes[0] in ((1,), grpc.StatusCode.UNAVAILABLE)


@pytest.mark.parametrize(
    ("model", "rows", "error", "says"),
    [
        ("nope", np.zeros((1, 30)), NotFound, "not loaded"),
        (MODEL, np.zeros((1, 29)), InvalidArgument, "[N, 30]"),
        (MODEL, np.zeros((0, 30)), InvalidArgument, "no rows"),
        (MODEL, np.zeros((6, 30)), InvalidArgument, "at most 5"),
        (MODEL, np.full((1, 30), np.nan), InvalidArgument, "finite"),
        (BARE, np.zeros((1, 30)), FailedPrecondition, "no explanation background"),
    ],
)
async def test_refusals(
    explaining: Explaining, model: str, rows: np.ndarray, error: type[CascadeError], says: str
) -> None:
    with pytest.raises(error, match=None) as raised:
        await explaining.core.explain(_query(rows, model))
    assert says in str(raised.value)


async def test_kernelshap_adds_up_within_its_budget_and_refuses_beyond(
    explaining: Explaining, dataset: Dataset
) -> None:
    rows = dataset.rows[200:202].astype(np.float64)

    _, explanation = await explaining.core.explain(_query(rows, NEURAL))
    small = ExplainQuery(NEURAL, "", rows, None, pb.ExplainBudget(max_evaluations=1000))
    with pytest.raises(InvalidArgument, match="KernelSHAP needs") as refused:
        await explaining.core.explain(small)

    assert explanation.method == "kernel" and explanation.evaluations > 1000
    np.testing.assert_allclose(
        explanation.base_values + explanation.attributions.sum(axis=1), explanation.outputs, atol=1e-6
    )
    assert "budget" in str(refused.value)


async def test_a_deadline_that_passes_is_deadline_exceeded(explaining: Explaining, dataset: Dataset) -> None:
    rows = dataset.rows[300:305].astype(np.float64)
    query = ExplainQuery(NEURAL, "", rows, None, pb.ExplainBudget(deadline_seconds=0.001))

    with pytest.raises(ExplainDeadline) as late:
        await explaining.core.explain(query)

    assert late.value.status is grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_request_budget_is_lowered_to_the_server_limits() -> None:
    limits = ExplainLimits(max_rows=5, max_evaluations=1000, deadline_seconds=10.0)

    assert limits.budget(pb.ExplainBudget()) == (5, 1000, 10.0)
    assert limits.budget(pb.ExplainBudget(max_rows=2, max_evaluations=10**9, deadline_seconds=3)) == (
        2,
        1000,
        3.0,
    )


class _HeldSubjects:
    """A subject source that holds every request until released: in-flight requests to count."""

    def __init__(self, subject: ExplainSubject) -> None:
        self.subject_value = subject
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def subject(self, model: LoadedModel) -> ExplainSubject:
        self.entered.set()
        await self.release.wait()
        return self.subject_value

    async def close(self) -> None:
        pass


async def test_beyond_the_concurrency_cap_is_resource_exhausted(
    explaining: Explaining, dataset: Dataset, models: dict[int, TrainedModel]
) -> None:
    features, background = parse_background(MODEL, 1, _background_tag(dataset), dataset.features)
    held = _HeldSubjects(ExplainSubject(MODEL, 1, "sha", models[1].onnx, features, background))
    core = ExplainCore(explaining.repository, held, explaining.core.pool, ExplainLimits(max_concurrent=1))
    rows = dataset.rows[:1].astype(np.float64)
    first = asyncio.create_task(core.explain(_query(rows)))
    await held.entered.wait()

    with pytest.raises(ExplainBusy, match="busy") as busy:
        await core.explain(_query(rows))
    held.release.set()
    _, explanation = await first

    assert busy.value.status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert explanation.outputs.shape == (1,)
    assert core.in_flight == 0
    await core.explain(_query(rows))  # the slot is free again


@pytest.mark.parametrize(
    ("tag", "says"),
    [
        ("", "no explanation background"),
        ("{not json", "is not"),
        (json.dumps({"rows": [[1.0, 2.0]]}), "3 features but its explanation background 2"),
        (json.dumps({"features": ["a", "c", "b"], "rows": [[1.0, 2.0, 3.0]]}), "differ"),
        (json.dumps({"features": ["a", "b", "c"], "rows": [[1.0, None, 3.0]]}), "finite"),
    ],
)
def test_a_bad_background_is_failed_precondition(tag: str, says: str) -> None:
    with pytest.raises(FailedPrecondition) as raised:
        parse_background("m", 3, tag, ["a", "b", "c"])
    assert says in str(raised.value)


@pytest.mark.parametrize(
    ("tensor", "says"),
    [
        (pb.Tensor(datatype="INT64", shape=[1, 2]), "FP32 or FP64"),
        (pb.Tensor(datatype="FP32", shape=[2]), "[rows, features]"),
        (pb.Tensor(datatype="FP64", shape=[1, 2], raw_contents=b"\0" * 8), "needs 16"),
        (
            pb.Tensor(datatype="FP32", shape=[1, 2], contents=pb.TensorContents(fp32_contents=[1.0])),
            "needs 2",
        ),
    ],
)
def test_a_bad_tensor_is_invalid_argument(tensor: pb.Tensor, says: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        rows_of(tensor)
    assert says in str(raised.value)


def test_tensors_decode_typed_and_raw() -> None:
    rows = np.arange(6, dtype=np.float64).reshape(2, 3)
    raw = pb.Tensor(datatype="FP64", shape=[2, 3], raw_contents=rows.astype("<f8").tobytes())
    typed = pb.Tensor(
        datatype="FP32", shape=[2, 3], contents=pb.TensorContents(fp32_contents=rows.ravel().tolist())
    )

    np.testing.assert_array_equal(rows_of(raw), rows)
    np.testing.assert_array_equal(rows_of(typed), rows)


# -- over gRPC, through the SDK's typed client ---------------------------------------------------------
@pytest.fixture(scope="module")
async def explainer(explaining: Explaining) -> AsyncIterator[ExplainClient]:
    server = grpc.aio.server()
    register(server, explaining.core)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    client = ExplainClient(RemoteService("serving", grpc.aio.insecure_channel(address), address), timeout=60)
    try:
        yield client
    finally:
        await client.close()
        await server.stop(None)


async def test_explain_over_grpc(explainer: ExplainClient, dataset: Dataset) -> None:
    explained = await explainer.explain(MODEL, dataset.rows[7], request_id="r-7")

    assert (explained.model, explained.version, explained.request_id) == (MODEL, 1, "r-7")
    assert explained.features == tuple(dataset.features)
    [row] = explained.rows
    assert abs(row.base_value + sum(row.attributions) - row.output) < 1e-6
    assert explained.evaluations > 0 and explained.method in ("linear", "tree", "kernel")
    document = json.loads(json.dumps(explained.to_dict()))
    assert document["rows"][0]["attributions"].keys() == set(dataset.features)


@pytest.mark.parametrize(
    ("model", "rows", "error"),
    [
        ("nope", np.zeros((1, 30)), NotFound),
        (MODEL, np.full((1, 30), np.inf), InvalidArgument),
        (BARE, np.zeros((1, 30)), FailedPrecondition),
    ],
)
async def test_refusals_over_grpc_keep_their_status(
    explainer: ExplainClient, model: str, rows: np.ndarray, error: type[CascadeError]
) -> None:
    with pytest.raises(error):
        await explainer.explain(model, rows)
