"""The loop you can leave alone, on the real stack (real Kafka, real gRPC, six service processes):

- a model's own training rows sent through serving, thousands of them, one at a time and in
  batches, with shifted rows pinned to an older version in between, are no drift: no drift event,
  no new version. For diabetes (a regression with a binary and heavily tied features) and for
  breast cancer (a classification with continuous features only);
- a classifier's label-free (CBPE-like) estimate shows a number, from the probabilities serving logs;
- features moved by one standard deviation are drift, and one drift event is emitted. Without labels
  or a newer dataset version, it says there is no new data to learn from and no version is made;
  with labels sent on labels.v1, the labelled rows go to ingest as a feedback batch, and the version
  trained on it has that batch in its lineage.

The stack is the session's (tests/integration/conftest.py): a window of 40 predictions, a report
every 20, two drifted reports in a row to trigger, a cooldown of an hour, and only models named
*_loop* retrained on drift (so other tests' deliberately shifted traffic retrains nothing)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaConsumer
from sklearn.datasets import load_breast_cancer, load_diabetes

from cascade.events import DriftDetected, LabelsArrived, Topics
from cascade.stack import Stack
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.stubs.cascade.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc
from tests.integration.support import drift_report, model_ready, produce, upload, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TIMEOUT = 180.0
EVERY = 20  # the stack's monitor reports every 20 rows
TOPICS = Topics("it")
FALSE_ALARM_BUDGET = 0.02  # of reports on unshifted traffic; the monitor states 1%


class Client:
    """One tritonclient connection for many requests, as a real client keeps one."""

    def __init__(self, stack: Stack, model: str) -> None:
        self.model = model
        self._client = triton.InferenceServerClient(url=stack.address("serving"))

    def close(self) -> None:
        self._client.close()

    def infer(self, rows: np.ndarray, version: str = "", request_id: str = "") -> str:
        """The version that answered."""
        request = triton.InferInput("input", list(rows.shape), "FP32")
        request.set_data_from_numpy(rows.astype(np.float32))
        result = self._client.infer(self.model, [request], model_version=version, request_id=request_id)
        return str(result.get_response().model_version)


def _batches(order: np.ndarray) -> Iterator[np.ndarray]:
    """Requests of 1 row (a third of the rows), then of 7, 20 and 50 rows, cycling."""
    singles = len(order) // 3
    for index in order[:singles]:
        yield np.array([index])
    start, sizes = singles, (7, 20, 50)
    while start < len(order):
        size = sizes[start % len(sizes)]
        yield order[start : start + size]
        start += size


def _history(stack: Stack, model: str) -> monitor_pb2.DriftHistory:
    with grpc.insecure_channel(stack.address("monitor")) as channel:
        return monitor_pb2_grpc.MonitorServiceStub(channel).GetDriftHistory(
            monitor_pb2.GetDriftHistoryRequest(model=model, limit=1000), timeout=5
        )


def _versions(stack: Stack, model: str) -> list[registry_pb2.ModelVersion]:
    with grpc.insecure_channel(stack.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        return list(
            stub.ListModelVersions(registry_pb2.ListModelVersionsRequest(model=model), timeout=10).versions
        )


def _drift_events(stack: Stack, model: str) -> list[DriftDetected]:
    """Every *drift detected* of `model` on the real topic, read from the beginning."""

    async def read() -> list[DriftDetected]:
        consumer = AIOKafkaConsumer(
            TOPICS.for_event(DriftDetected),
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
        # Events are keyed by model; the topic also holds other tests' records (the fuzz test's
        # hostile bodies among them), which are not this model's and need not even parse.
        ours = [r for rs in batches.values() for r in rs if r.key == model.encode()]
        return [DriftDetected.model_validate_json(r.value) for r in ours]

    return asyncio.run(read())


def _champion_report(stack: Stack, client: Client, rows: np.ndarray, version: int) -> int:
    """Serve unshifted rows until the monitor reports on `version` (it counts only the champion's
    answers, so rows served before it took the promotion in are not counted); its row count then."""
    shuffled = np.random.default_rng(version).permutation(rows)  # rows in file order are no sample
    probe = iter(range(0, 10**6, EVERY))

    def reported() -> int | None:
        start = next(probe) % (len(rows) - EVERY)
        client.infer(shuffled[start : start + EVERY])
        report = drift_report(stack, client.model)
        return report.predictions_seen if report is not None and report.model_version == version else None

    return wait_for(reported, TIMEOUT, f"a report on {client.model} v{version}", interval=1.0)


def _serve_own_rows(
    stack: Stack,
    client: Client,
    rows: np.ndarray,
    copies: int,
    seed: int,
    seen: int,
    labels: np.ndarray | None = None,
) -> monitor_pb2.DriftReport:
    """Every training row `copies` times, shuffled, one at a time and in batches; with their labels
    on labels.v1 when given. The monitor's report once it has counted them all."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(rows)) for _ in range(copies)])
    messages = []
    for picked in _batches(order):
        request_id = str(uuid.uuid4())
        client.infer(rows[picked], request_id=request_id)
        if labels is not None:
            document = {"model": client.model, "request_id": request_id, "labels": labels[picked].tolist()}
            messages.append((TOPICS.for_event(LabelsArrived), json.dumps(document).encode()))
    if messages:
        produce(stack.address("kafka"), messages, key=client.model.encode())
    # Reports come every EVERY rows: the last few rows may wait for the next one.
    total = seen + len(order) - (EVERY - 1)
    return wait_for(
        lambda: (r := drift_report(stack, client.model)) is not None and r.predictions_seen >= total and r,
        TIMEOUT,
        f"the monitor to count {total} rows of {client.model}",
    )


def _no_drift_so_far(stack: Stack, model: str, report: monitor_pb2.DriftReport, versions: int) -> None:
    assert not report.dataset_drifted, [f.feature for f in report.features if f.drifted]
    # The prediction against the champion's own outputs: one window's p-value is uniform on (0, 1)
    # (against the labels, a regressor's own rows gave p ~ 1e-5 in every report).
    assert report.prediction.feature == "prediction" and report.prediction.p_value > 1e-3, report.prediction
    history = _history(stack, model)
    drifted = [v for v in history.verdicts if v.dataset_drifted]
    # A report is a test: a false alarm now and then is its stated rate, not a failure. What must
    # not happen is the loop acting on them (no event, no version: asserted below).
    assert len(drifted) <= FALSE_ALARM_BUDGET * len(history.verdicts), (
        f"{len(drifted)} of {len(history.verdicts)} reports found dataset drift: "
        + "; ".join(f"{v.predictions_seen} rows: {len(v.drifted_features)} features" for v in drifted)
    )
    assert not history.drift_events
    assert len(_versions(stack, model)) == versions


def _shifted(rows: np.ndarray, features: int, stds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows in a seeded random order (rows in file order are no sample of the data), the first
    `features` moved by `stds` of their standard deviations; and that order."""
    order = np.random.default_rng(seed).permutation(len(rows))
    moved = rows[order]
    moved[:, :features] += stds * rows[:, :features].std(axis=0)
    return moved, order


def test_diabetes_own_rows_are_no_drift_and_a_shift_without_new_data_retrains_nothing(stack: Stack) -> None:
    model = "diabetes_loop"
    frame = load_diabetes(as_frame=True, scaled=False).frame
    features = [c for c in frame.columns if c != "target"]
    rows = frame[features].to_numpy(np.float64)
    # Two versions, so that requests can be pinned to the older one.
    upload(stack, model, frame.iloc[:300])
    wait_for(lambda: model_ready(stack, model, "1"), TIMEOUT, "serving to load v1")
    upload(stack, model, frame.iloc[300:])
    wait_for(lambda: model_ready(stack, model, "2"), TIMEOUT, "serving to load v2, trained on all rows")
    champion = Client(stack, model)
    try:
        wait_for(lambda: champion.infer(rows[:1]) == "2", TIMEOUT, "v2 to answer unpinned requests")
        seen = _champion_report(stack, champion, rows, 2)
        # Rows pinned to v1, shifted far: counted against v2 they would be drift.
        for start in range(0, 400, 40):
            assert champion.infer(_shifted(rows, 10, 3.0, start)[0][:40], version="1") == "1"
        calm = _serve_own_rows(stack, champion, rows, copies=5, seed=1, seen=seen)
        assert calm.model_version == 2 and calm.window_size == 2 * EVERY
        by_name = {f.feature: f for f in calm.features}
        # The stack's default, calibrated mode: sex compared as categories, s4's ties through float32.
        assert by_name["sex"].test == "chisquare_calibrated" and by_name["age"].test == "ks_calibrated"
        assert calm.prediction.test == "ks"  # a regressor's value, against v2's own outputs
        _no_drift_so_far(stack, model, calm, versions=2)

        # Six of ten features moved by one standard deviation: drift, but nothing new to learn from.
        shifted, _ = _shifted(rows, 6, 1.0, seed=3)
        for start in range(0, 6 * EVERY, EVERY):
            champion.infer(shifted[start : start + EVERY])
        [event] = wait_for(lambda: _drift_events(stack, model), TIMEOUT, "the drift event")
    finally:
        champion.close()
    assert event.kind == "drift" and event.model_version == 2 and event.action == "no_new_data"
    assert "drift detected; no new data to learn from" in event.summary
    assert len(set(features[:6]) & set(event.drifted_features)) >= 3, event.drifted_features
    assert len(set(event.drifted_features) - set(features[:6])) <= 1, event.drifted_features
    # The drift went on after the event: within the cooldown, one more decision is recorded, held back.
    [recorded] = [e for e in _history(stack, model).drift_events if not e.held_back]
    assert recorded.event_id == event.id and "no new data" in recorded.summary
    assert recorded.triggered.startswith("none: no new data to learn from"), recorded.triggered
    # The trainer took the event in and made nothing of it.
    wait_for(
        lambda: f"{model}: drift on v2, action no_new_data" in stack.log_file("trainer").read_text(),
        TIMEOUT,
        "the trainer to pass on the event",
    )
    assert len(_versions(stack, model)) == 2


def test_breast_cancer_own_rows_are_no_drift_and_labelled_rows_retrain_through_ingest(stack: Stack) -> None:
    model = "bc_loop"
    frame = load_breast_cancer(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    rows, labels = frame[features].to_numpy(np.float64), frame["target"].to_numpy(np.float64)
    response, _ = upload(stack, model, frame)
    wait_for(lambda: model_ready(stack, model, "1"), TIMEOUT, "serving to load v1")
    client = Client(stack, model)
    try:
        seen = _champion_report(stack, client, rows, 1)
        calm = _serve_own_rows(stack, client, rows, copies=4, seed=2, seen=seen, labels=labels)
        assert calm.model_version == 1 and {f.test for f in calm.features} == {"ks_calibrated"}
        assert calm.prediction.test == "z"  # a binary label, against v1's own labels of its rows
        _no_drift_so_far(stack, model, calm, versions=1)
        # The live label-free estimate, from the probabilities serving logs.
        estimated = wait_for(
            lambda: (
                (r := drift_report(stack, model)) is not None
                and r.performance.HasField("estimated_accuracy")
                and r
            ),
            TIMEOUT,
            "a label-free estimate",
        )
        assert 0.8 < estimated.performance.estimated_accuracy <= 1.0
        assert estimated.performance.estimate_note.startswith("estimate (CBPE-like)")
        measured = wait_for(
            lambda: (r := drift_report(stack, model)) is not None and r.performance.labelled_rows > 0 and r,
            TIMEOUT,
            "labels joined with their predictions",
        )
        assert measured.performance.value > 0.9

        # Ten of thirty features moved by one standard deviation, with their labels.
        shifted, order = _shifted(rows, 10, 1.0, seed=4)
        for start in range(0, 8 * EVERY, EVERY):
            request_id = str(uuid.uuid4())
            client.infer(shifted[start : start + EVERY], request_id=request_id)
            document = {
                "model": model,
                "request_id": request_id,
                "labels": labels[order[start : start + EVERY]].tolist(),
            }
            produce(
                stack.address("kafka"),
                [(TOPICS.for_event(LabelsArrived), json.dumps(document).encode())],
                key=model.encode(),
            )
        [event] = wait_for(lambda: _drift_events(stack, model), TIMEOUT, "the drift event")
    finally:
        client.close()
    assert event.kind == "drift" and event.model_version == 1 and event.action == "feedback", event.summary
    assert len(set(features[:10]) & set(event.drifted_features)) >= 5, event.drifted_features
    assert len(set(event.drifted_features) - set(features[:10])) <= 1, event.drifted_features
    assert "feedback batch" in event.summary

    # The feedback batch went through ingest like any other; the version trained on it says so.
    retrained = wait_for(
        lambda: [v for v in _versions(stack, model) if v.version == 2],
        TIMEOUT,
        "the version trained on feedback",
    )[0]
    assert retrained.dataset_version != response.dataset_version
    with grpc.insecure_channel(stack.address("registry")) as channel:
        lineage = registry_pb2_grpc.RegistryServiceStub(channel).GetLineage(
            registry_pb2.GetLineageRequest(model=model, version=2), timeout=10
        )
    with grpc.insecure_channel(stack.address("ingest")) as channel:
        batches = (
            ingest_pb2_grpc.IngestServiceStub(channel)
            .ListBatches(
                ingest_pb2.ListBatchesRequest(dataset=model, version=retrained.dataset_version), timeout=10
            )
            .batches
        )
    feedback = [b for b in batches if b.source.startswith("feedback:")]
    assert len(feedback) == 1 and event.id in feedback[0].source
    assert feedback[0].batch_id in lineage.batch_ids
    assert feedback[0].report.rows_received >= 50
    assert not any(
        v.dataset_version == response.dataset_version and v.version > 1 for v in _versions(stack, model)
    )


def test_labels_are_plain_json_and_bad_ones_are_refused() -> None:
    assert LabelsArrived.model_validate_json('{"model": "m", "request_id": "r", "label": 1}').values == [1.0]
    assert LabelsArrived.model_validate({"model": "m", "request_id": "r", "labels": [0, 1]}).values == [0, 1]
    with pytest.raises(ValueError, match="exactly one"):
        LabelsArrived.model_validate({"model": "m", "request_id": "r"})
