"""The monitor closes the loop through real Kafka, real gRPC and six real service processes:
unshifted traffic is no drift; traffic with features shifted by a known amount is drift, named per
feature with its test; the drift verdict retrains, validates, promotes and hot-swaps by itself, with
the cause in the registry's history, and the cooldown stops a second retrain.

The stack is the session's (tests/integration/conftest.py): window of 40 predictions, a report every
20, two drifted reports in a row to trigger, a cooldown of an hour, and only models named bc_loop*
retrained on drift (so other tests' deliberately shifted traffic retrains nothing)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from sklearn.datasets import load_breast_cancer

from shared.cli.stack import Stack
from shared.events import LabelsArrived, Topics
from shared.stubs.cascade.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from shared.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc
from tests.integration.support import drift_report, model_ready, produce, upload, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODEL = "bc_loop"
TIMEOUT = 120.0
BATCH = 20  # rows per request: the monitor reports every 20 rows
SHIFTED = 16  # features shifted: more than half of 30, so the dataset drifts
SHIFT_STDS = 3.0  # each shifted by three of its training standard deviations


def _infer(stack: Stack, rows: np.ndarray, request_id: str) -> str:
    """The version that answered, through tritonclient with the request id the labels will name."""
    client = triton.InferenceServerClient(url=stack.address("serving"))
    try:
        request = triton.InferInput("input", list(rows.shape), "FP32")
        request.set_data_from_numpy(rows.astype(np.float32))
        result = client.infer(MODEL, [request], request_id=request_id)
        return str(result.get_response().model_version)
    finally:
        client.close()


def _report_after(stack: Stack, seen: int) -> monitor_pb2.DriftReport:
    def check() -> monitor_pb2.DriftReport | None:
        report = drift_report(stack, MODEL)
        return report if report is not None and report.predictions_seen >= seen else None

    return wait_for(check, TIMEOUT, f"a drift report covering {seen} predictions")


def _history(stack: Stack) -> monitor_pb2.DriftHistory:
    with grpc.insecure_channel(stack.address("monitor")) as channel:
        return monitor_pb2_grpc.MonitorServiceStub(channel).GetDriftHistory(
            monitor_pb2.GetDriftHistoryRequest(model=MODEL, limit=1000), timeout=5
        )


def _version(stack: Stack, version: int) -> registry_pb2.ModelVersion | None:
    with grpc.insecure_channel(stack.address("registry")) as channel:
        try:
            return registry_pb2_grpc.RegistryServiceStub(channel).GetModelVersion(
                registry_pb2.GetModelVersionRequest(model=MODEL, version=version), timeout=5
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


@dataclass(frozen=True)
class Traffic:
    frame: pd.DataFrame
    features: list[str]
    rows: np.ndarray
    order: np.ndarray  # a seeded shuffle of the rows; requests take consecutive slices
    shift: np.ndarray  # added to shifted requests


def test_drift_is_found_per_feature_and_retrains_validates_and_swaps_by_itself(stack: Stack) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    features = [column for column in frame.columns if column != "target"]
    response, _ = upload(stack, MODEL, frame)
    assert response.created
    wait_for(lambda: model_ready(stack, MODEL, "1"), TIMEOUT, "serving to load version 1")
    shift = np.zeros(len(features))
    shift[:SHIFTED] = SHIFT_STDS * frame[features[:SHIFTED]].std().to_numpy()
    traffic = Traffic(
        frame,
        features,
        frame[features].to_numpy(np.float64),
        np.random.default_rng(7).permutation(len(frame)),
        shift,
    )

    _unshifted_traffic_is_not_drift(stack, traffic)
    _shifted_features_drift_with_their_test_named(stack, traffic)
    event_id = _the_loop_retrains_validates_promotes_and_serves(stack, traffic, response.dataset_version)
    _the_cooldown_stops_a_second_retrain(stack, traffic, event_id)


def _unshifted_traffic_is_not_drift(stack: Stack, traffic: Traffic) -> None:
    """Rows of the training data, labelled later through the labels topic."""
    labels = []
    for start in range(0, 4 * BATCH, BATCH):
        picked = traffic.order[start : start + BATCH]
        request_id = str(uuid.uuid4())
        assert _infer(stack, traffic.rows[picked], request_id) == "1"
        truth = traffic.frame["target"].to_numpy()[picked].tolist()
        labels.append({"model": MODEL, "request_id": request_id, "labels": truth})
    calm = _report_after(stack, 4 * BATCH)
    assert calm.model_version == 1 and calm.window_size == 2 * BATCH
    assert not calm.dataset_drifted
    assert {f.test for f in calm.features} == {"ks"}  # 569 reference rows, continuous features
    assert calm.prediction.feature == "prediction" and calm.prediction.test == "z"  # binary output
    history = _history(stack)
    assert history.verdicts and not any(v.dataset_drifted for v in history.verdicts)
    assert not history.drift_events

    # Ground truth as any producer would send it: plain JSON on the labels topic.
    topic = Topics("it").for_event(LabelsArrived)
    produce(stack.address("kafka"), [(topic, json.dumps(d).encode()) for d in labels], key=MODEL.encode())
    measured = wait_for(
        lambda: (
            (r := drift_report(stack, MODEL)) is not None and r.performance.labelled_rows == 4 * BATCH and r
        ),
        TIMEOUT,
        "the labels to be joined with their predictions",
    )
    performance = measured.performance
    assert performance.metric == "accuracy" and performance.value > 0.85 and not performance.decayed
    assert performance.HasField("champion_value")  # v1's held-out accuracy from its training run
    assert not performance.HasField("estimated_accuracy")  # serving logs no probabilities
    assert performance.estimate_note.startswith("unavailable")


def _shifted_features_drift_with_their_test_named(stack: Stack, traffic: Traffic) -> None:
    """The first SHIFTED features moved by SHIFT_STDS of their training std."""
    for start in range(4 * BATCH, 8 * BATCH, BATCH):
        _infer(stack, traffic.rows[traffic.order[start : start + BATCH]] + traffic.shift, str(uuid.uuid4()))
    drifted = _report_after(stack, 8 * BATCH)
    assert drifted.dataset_drifted
    by_name = {f.feature: f for f in drifted.features}
    for name in traffic.features[:SHIFTED]:
        assert by_name[name].drifted and by_name[name].test == "ks", name
        assert by_name[name].p_value < by_name[name].threshold == 0.05
    unshifted_drifted = [name for name in traffic.features[SHIFTED:] if by_name[name].drifted]
    assert len(unshifted_drifted) <= 2, unshifted_drifted  # 14 tests at 5%: a stray one at most, here


def _the_loop_retrains_validates_promotes_and_serves(
    stack: Stack, traffic: Traffic, dataset_version: str
) -> str:
    wait_for(lambda: model_ready(stack, MODEL, "2"), TIMEOUT, "serving to load the retrained version 2")
    events = wait_for(lambda: list(_history(stack).drift_events), TIMEOUT, "the drift event in the history")
    assert len(events) == 1 and events[0].kind == "drift" and events[0].model_version == 1
    event_id = events[0].event_id

    retrained, first = _version(stack, 2), _version(stack, 1)
    assert retrained is not None and first is not None
    cause = json.loads(retrained.tags["cause"])
    assert cause["kind"] == "drift" and cause["event_id"] == event_id
    reported = {f["feature"]: f for f in cause["report"]["features"]}
    assert all(
        reported[name]["drifted"] and reported[name]["test"] == "ks" for name in traffic.features[:SHIFTED]
    )
    assert retrained.dataset_version == dataset_version  # the newest version: no data arrived since
    assert retrained.idempotency_key != first.idempotency_key
    # Gates: same data and seed, so no regression against the champion; every gate says why.
    assert retrained.validation.passed
    verdict = json.loads(retrained.validation.report_json)
    assert verdict["cause"]["event_id"] == event_id
    assert all(gate["passed"] for gate in verdict["gates"]), verdict["gates"]
    gates = {gate["name"]: gate for gate in verdict["gates"]}
    assert {"enough_fresh_rows", "min_accuracy", "no_regression"} <= set(gates)
    assert verdict["champion_version"] == 1 and "champion" in verdict["metrics"]  # judged against v1

    # The registry's alias history says the move to v2 was caused by that drift.
    registry_db = stack.data_dir("registry") / "registry.sqlite3"
    with sqlite3.connect(f"file:{registry_db}?mode=ro", uri=True) as db:
        reasons = [
            row[0]
            for row in db.execute(
                "SELECT reason FROM alias_history WHERE model=? AND alias='champion' AND to_version=2",
                (MODEL,),
            )
        ]
    assert reasons and f"retrained because drift was detected (event {event_id})" in reasons[0]
    assert _infer(stack, traffic.rows[traffic.order[:4]], str(uuid.uuid4())) == "2"
    return event_id


def _the_cooldown_stops_a_second_retrain(stack: Stack, traffic: Traffic, event_id: str) -> None:
    """Still-shifted traffic on v2 drifts again, but no second retrain is triggered."""
    seen = 8 * BATCH + 4
    for start in range(8 * BATCH, 11 * BATCH, BATCH):
        _infer(stack, traffic.rows[traffic.order[start : start + BATCH]] + traffic.shift, str(uuid.uuid4()))
        seen += BATCH
    again = _report_after(stack, seen)
    assert again.model_version == 2 and again.dataset_drifted
    assert [e.event_id for e in _history(stack).drift_events] == [event_id]
    assert _version(stack, 3) is None


def test_labels_are_plain_json_and_bad_ones_are_refused() -> None:
    assert LabelsArrived.model_validate_json('{"model": "m", "request_id": "r", "label": 1}').values == [1.0]
    assert LabelsArrived.model_validate({"model": "m", "request_id": "r", "labels": [0, 1]}).values == [0, 1]
    with pytest.raises(ValueError, match="exactly one"):
        LabelsArrived.model_validate({"model": "m", "request_id": "r"})
