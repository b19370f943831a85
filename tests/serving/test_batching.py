"""Adaptive batching (cascade.services.serving.batching) on a real onnxruntime session.

The model doubles `x` ([-1, 3] floats) and looks `idx` ([-1] int64) up in a table of five values, so
every output row shows which input row it came from, and an index outside the table makes
onnxruntime fail the whole run: the bad request of a batch. The session is wrapped only to record
the rows of each run; counts of runs, never timings, show what was batched. The last test runs the
real service in a child process (cascade.stubs.inference and tritonclient cannot share this one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import aio as triton_aio

from cascade.errors import InvalidArgument
from cascade.services.serving.batching import BATCHING_OFF, Batcher, BatchingPolicy, Prediction
from cascade.services.serving.repository import LoadedModel, _tensor_specs

from .harness import ServingProcess, assert_answers, raw_input
from .support import MODEL, Dataset, RunningRegistry, TrainedModel

TABLE = np.array([10.0, 11.0, 12.0, 13.0, 14.0], dtype=np.float32)


def _onnx_model() -> bytes:
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3]),
        helper.make_tensor_value_info("idx", TensorProto.INT64, [None]),
    ]
    outputs = [
        helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [None, 3]),
        helper.make_tensor_value_info("looked_up", TensorProto.FLOAT, [None]),
    ]
    initializers = [
        helper.make_tensor("table", TensorProto.FLOAT, [5], TABLE.tolist()),
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("Gather", ["table", "idx"], ["looked_up"]),
    ]
    graph = helper.make_graph(nodes, "lookup", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


ONNX = _onnx_model()


class RecordingSession:
    """A real session that notes the rows of every run."""

    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # the failing Gather of the bad-request tests logs errors
        self.session = ort.InferenceSession(ONNX, options, providers=["CPUExecutionProvider"])
        self.runs: list[int] = []

    def run(self, names: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.runs.append(len(feeds["idx"]))
        return self.session.run(names, dict(feeds))  # type: ignore[no-any-return]

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()


def loaded(session: RecordingSession) -> LoadedModel:
    return LoadedModel("lookup", 1, session, *_tensor_specs(session))  # type: ignore[arg-type]


def feeds_of(first: int, rows: int, bad: bool = False) -> dict[str, np.ndarray]:
    """`rows` rows numbered from `first`; with `bad`, one index falls outside the table."""
    numbers = np.arange(first, first + rows, dtype=np.float32)
    x = np.repeat(numbers[:, None], 3, axis=1)
    idx = np.arange(first, first + rows, dtype=np.int64) % len(TABLE)
    if bad:
        idx[-1] = 99
    return {"x": x, "idx": idx}


def assert_own_rows(prediction: Prediction, feeds: Mapping[str, np.ndarray]) -> None:
    doubled, looked_up = prediction.outputs
    np.testing.assert_array_equal(doubled, feeds["x"] * 2)
    np.testing.assert_array_equal(looked_up, TABLE[feeds["idx"]])


async def concurrently(
    batcher: Batcher, model: LoadedModel, requests: list[dict[str, np.ndarray]]
) -> list[Any]:
    return await asyncio.gather(
        *(batcher.predict(model, feeds, len(feeds["idx"])) for feeds in requests), return_exceptions=True
    )


@pytest.mark.parametrize("inline_max_rows", [256, 4], ids=["on the loop", "in a thread"])
async def test_each_caller_gets_its_own_rows_in_order(inline_max_rows: int) -> None:
    session = RecordingSession()
    model = loaded(session)
    batcher = Batcher(BatchingPolicy(max_delay_seconds=0.05, max_batch_rows=256), inline_max_rows)
    sizes = [1, 5, 2, 7, 1, 3, 4, 1, 6, 2] * 3
    starts = np.cumsum([0, *sizes[:-1]])
    requests = [feeds_of(int(start) * 10, size) for start, size in zip(starts, sizes, strict=True)]

    predictions = await concurrently(batcher, model, requests)

    for prediction, feeds in zip(predictions, requests, strict=True):
        assert_own_rows(prediction, feeds)
    assert sum(session.runs) == sum(sizes)
    assert len(session.runs) < len(requests)  # batched
    # Triton's counting: one execution per session run, carried by one request of each batch.
    assert sum(p.executions for p in predictions) == len(session.runs)


async def test_a_batch_closes_at_the_first_request_after_the_max_delay() -> None:
    """Requests one loop turn apart, the (injected) clock moving 1/16 s per request: with a delay of
    1/4 s no batch holds more than the five requests that came within it."""
    now = [0.0]
    session = RecordingSession()
    model = loaded(session)
    batcher = Batcher(BatchingPolicy(max_delay_seconds=0.25, max_batch_rows=256), clock=lambda: now[0])

    tasks = []
    for index in range(23):
        tasks.append(asyncio.create_task(batcher.predict(model, feeds_of(index, 1), 1)))
        await asyncio.sleep(0)  # the next request arrives a loop turn later
        now[0] += 0.0625  # exact in binary: the delay passes after exactly four requests
    predictions = await asyncio.gather(*tasks)

    for index, prediction in enumerate(predictions):
        assert_own_rows(prediction, feeds_of(index, 1))
    assert sum(session.runs) == 23
    assert max(session.runs) == 5  # arrivals at +0, 1/16, 2/16, 3/16 and 4/16 (which closes it)
    assert session.runs.count(5) >= 3


async def test_requests_that_come_often_wait_for_each_other_across_quiet_turns() -> None:
    """Once requests come closer together than the delay, a batch waits for the next ones even when
    loop turns pass without one (the clock stands still: the delay never passes)."""
    session = RecordingSession()
    model = loaded(session)
    batcher = Batcher(BatchingPolicy(max_delay_seconds=0.5), clock=lambda: 0.0)
    # Two requests together: a gap between requests is known (and no wait has been in vain).
    await asyncio.gather(batcher.predict(model, feeds_of(0, 1), 1), batcher.predict(model, feeds_of(1, 1), 1))
    session.runs.clear()

    tasks = []
    for index in range(10):
        tasks.append(asyncio.create_task(batcher.predict(model, feeds_of(index, 1), 1)))
        for _ in range(3):
            await asyncio.sleep(0)  # turns without a new request
    predictions = await asyncio.gather(*tasks)

    for index, prediction in enumerate(predictions):
        assert_own_rows(prediction, feeds_of(index, 1))
    assert session.runs == [10]
    assert (batcher.waits, batcher.futile_waits) == (1, 0)


async def test_a_lone_caller_soon_stops_paying_the_delay() -> None:
    """One caller at a time, the clock standing still: requests seem to come closer together than the
    delay, but a wait that caught nobody stops the waiting for the next 16 batches."""
    session = RecordingSession()
    model = loaded(session)
    batcher = Batcher(BatchingPolicy(max_delay_seconds=0.2), clock=lambda: 0.0)
    for index in range(20):
        assert_own_rows(await batcher.predict(model, feeds_of(index, 1), 1), feeds_of(index, 1))
    assert session.runs == [1] * 20
    # The first request knows no gap; the 2nd and the 19th wait in vain, the 16 between do not wait.
    assert (batcher.waits, batcher.futile_waits) == (2, 2)


async def test_a_lone_request_does_not_wait_for_the_delay() -> None:
    """The first request (no gap known) and requests further apart than the delay close their batch
    after one turn of the loop without a new request: the clock never moves, yet they run."""
    session = RecordingSession()
    now = [0.0]
    batcher = Batcher(BatchingPolicy(max_delay_seconds=3600.0), clock=lambda: now[0])
    for index in range(3):
        prediction = await asyncio.wait_for(batcher.predict(loaded(session), feeds_of(index, 2), 2), 60)
        assert_own_rows(prediction, feeds_of(index, 2))
        now[0] += 7200.0
    assert session.runs == [2, 2, 2]


async def test_no_batch_exceeds_the_maximum_rows() -> None:
    session = RecordingSession()
    model = loaded(session)
    batcher = Batcher(BatchingPolicy(max_delay_seconds=0.05, max_batch_rows=8))
    sizes = [3, 3, 3, 1, 5, 2, 2, 4, 8, 9, 1, 7, 3]  # 8 and 9 run alone
    requests = [feeds_of(index * 100, size) for index, size in enumerate(sizes)]

    predictions = await concurrently(batcher, model, requests)

    for prediction, feeds in zip(predictions, requests, strict=True):
        assert_own_rows(prediction, feeds)
    assert max(session.runs) == 9  # the one request larger than a batch, alone
    assert [rows for rows in session.runs if rows != 9] and all(
        rows <= 8 for rows in session.runs if rows != 9
    )
    assert sum(session.runs) == sum(sizes)
    assert any(rows > 5 for rows in session.runs if rows != 9)  # requests were merged


@pytest.mark.parametrize("inline_max_rows", [256, 4], ids=["on the loop", "in a thread"])
async def test_a_bad_request_fails_alone(inline_max_rows: int) -> None:
    session = RecordingSession()
    model = loaded(session)
    batcher = Batcher(BatchingPolicy(max_delay_seconds=0.05), inline_max_rows)
    requests = [feeds_of(index * 10, 2, bad=index in (3, 6)) for index in range(8)]

    outcomes = await concurrently(batcher, model, requests)

    for index, (outcome, feeds) in enumerate(zip(outcomes, requests, strict=True)):
        if index in (3, 6):
            assert isinstance(outcome, InvalidArgument)
            assert "indices element out of data bounds" in str(outcome)
        else:
            assert_own_rows(outcome, feeds)
            assert outcome.executions == 1  # each good request ran again alone
    assert session.runs[0] == 16  # the batch, which failed, then each request alone
    assert session.runs[1:] == [2] * 8


async def test_a_cancelled_caller_does_not_stop_its_batch() -> None:
    session = RecordingSession()
    model = loaded(session)
    batcher = Batcher(BatchingPolicy(max_delay_seconds=0.05))
    requests = [feeds_of(index, 1) for index in range(4)]
    tasks = [asyncio.create_task(batcher.predict(model, feeds, 1)) for feeds in requests]
    await asyncio.sleep(0)  # all four joined the batch
    tasks[1].cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    for index in (0, 2, 3):
        assert_own_rows(outcomes[index], requests[index])
    assert session.runs == [4]


async def test_requests_of_different_shapes_or_models_never_share_a_run() -> None:
    first, second = RecordingSession(), RecordingSession()
    model, other = loaded(first), loaded(second)
    batcher = Batcher(BatchingPolicy(max_delay_seconds=0.05))
    as_float64 = {"x": feeds_of(50, 2)["x"].astype(np.float64), "idx": feeds_of(50, 2)["idx"]}
    calls: list[tuple[LoadedModel, dict[str, np.ndarray]]] = [
        (model, feeds_of(0, 2)),
        (other, feeds_of(10, 2)),
        (model, as_float64),  # another dtype: its own batch (onnxruntime refuses float64 for x)
        (model, feeds_of(20, 2)),
        (other, feeds_of(30, 2)),
    ]
    outcomes = await asyncio.gather(
        *(batcher.predict(m, feeds, 2) for m, feeds in calls), return_exceptions=True
    )
    assert isinstance(outcomes[2], InvalidArgument)  # alone, so nothing else failed with it
    for index in (0, 1, 3, 4):
        assert_own_rows(outcomes[index], calls[index][1])
    assert sorted(first.runs) == [2, 4] and second.runs == [4]


async def test_off_runs_every_request_alone() -> None:
    session = RecordingSession()
    model = loaded(session)
    batcher = Batcher(BATCHING_OFF)
    requests = [feeds_of(index * 10, 3) for index in range(10)]
    predictions = await concurrently(batcher, model, requests)
    for prediction, feeds in zip(predictions, requests, strict=True):
        assert_own_rows(prediction, feeds)
        assert prediction.executions == 1
    assert session.runs == [3] * 10


async def test_the_service_batches_concurrent_requests_and_counts_as_triton_does(
    registry: RunningRegistry, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    """The real service (a child process) with batching on, called over gRPC by tritonclient:
    concurrent requests of mixed sizes each get their own rows' answers; requests and rows count
    once each, executions once per session run, so fewer than requests."""
    serving = await ServingProcess.start(
        registry.address,
        env={
            "CASCADE_SERVING_BATCHING_ENABLED": "true",
            # Long enough that requests sent together always meet, whatever the machine's load.
            "CASCADE_SERVING_BATCHING_MAX_DELAY_MICROSECONDS": "50000",
        },
    )
    client = triton_aio.InferenceServerClient(serving.url)
    try:
        await serving.wait_until_ready(client)
        sizes = [1 + index % 7 for index in range(40)]
        starts = [sum(sizes[:index]) for index in range(len(sizes))]
        chunks = [dataset.rows[start : start + size] for start, size in zip(starts, sizes, strict=True)]
        results = await asyncio.gather(*(client.infer(MODEL, [raw_input(rows)]) for rows in chunks))
        for result, rows in zip(results, chunks, strict=True):
            assert_answers(result, models[1], rows)
        (stats,) = (await client.get_inference_statistics(MODEL)).model_stats
        assert stats.inference_stats.success.count == 40
        assert stats.inference_count == sum(sizes)
        assert 1 <= stats.execution_count < 40
    finally:
        await client.close()
        await serving.stop()
