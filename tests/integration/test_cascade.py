"""The whole cascade through real Kafka, real gRPC and six real service processes."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanKind
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_breast_cancer, make_classification
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.events import (
    DataArrived,
    ModelPromoted,
    ModelTrained,
    ModelValidated,
    PredictionLogged,
    RawRecords,
    Topics,
)
from cascade.messaging import DLQ_REASON, DLQ_SERVICE, DLQ_TOPIC
from cascade.stack import SERVICES, Stack
from cascade.training_spec import TrainingSpec
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.integration.support import (
    drift_report,
    infer,
    model_ready,
    produce,
    spans_of_trace,
    upload,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CASCADE_TIMEOUT = 120.0


def _breast_cancer_batches() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    cut = int(len(frame) * 0.6)
    return frame.iloc[:cut], frame.iloc[cut:]


@dataclass(frozen=True)
class Cascade:
    model: str
    first: pd.DataFrame
    second: pd.DataFrame
    trace_id: str


@pytest.fixture(scope="module")
def cascade(stack: Stack) -> Cascade:
    """Two batches of breast_cancer cascading into served versions 1 and 2 (asserted on the way)."""
    model = "bc_cascade"
    first, second = _breast_cancer_batches()
    features = first.drop(columns="target").to_numpy(np.float32)

    response, trace_id = upload(stack, model, first)
    assert response.created and response.report.rows_accepted == len(first)
    wait_for(lambda: model_ready(stack, model, "1"), CASCADE_TIMEOUT, "serving to load version 1")
    version, labels = infer(stack, model, features[:32])
    assert version == "1"
    assert np.mean(labels == first["target"].to_numpy()[:32]) > 0.85

    response, _ = upload(stack, model, second)
    assert response.created
    wait_for(
        lambda: infer(stack, model, features[:4])[0] == "2", CASCADE_TIMEOUT, "serving to swap to version 2"
    )
    return Cascade(model, first, second, trace_id)


def test_ingest_cascades_to_served_versions_one_then_two_in_one_trace(stack: Stack, cascade: Cascade) -> None:
    features = cascade.first.drop(columns="target").to_numpy(np.float32)
    assert infer(stack, cascade.model, features[:4])[0] == "2"
    assert (
        infer(stack, cascade.model, features[:4], version="1")[0] == "1"
    )  # the previous one stays addressable

    def all_six_services_in_trace() -> set[str] | None:
        services = {str(span["service.name"]) for span in spans_of_trace(stack, cascade.trace_id)}
        return services if {f"cascade-{name}" for name in SERVICES} <= services else None

    services = wait_for(
        all_six_services_in_trace, 30, "spans from all six services in the first cascade's trace"
    )
    assert services >= {f"cascade-{name}" for name in SERVICES}
    kinds = {(span["service.name"], span["kind"]) for span in spans_of_trace(stack, cascade.trace_id)}
    assert ("cascade-trainer", "SPAN_KIND_CONSUMER") in kinds
    assert ("cascade-monitor", "SPAN_KIND_CONSUMER") in kinds
    assert ("cascade-registry", "SPAN_KIND_SERVER") in kinds
    assert not any("grpc.health" in str(span["name"]) for span in spans_of_trace(stack, cascade.trace_id))


def test_an_otlp_receiver_gets_one_trace_with_the_cascade_span_tree(
    otlp_receiver: OtlpReceiver, cascade: Cascade
) -> None:
    def serving_swap_span() -> ReceivedSpan | None:
        return next(
            (
                span
                for span in otlp_receiver.spans(cascade.trace_id)
                if span.service == "cascade-serving" and span.kind == SpanKind.SPAN_KIND_CONSUMER
            ),
            None,
        )

    swap = wait_for(serving_swap_span, 30, "serving's promotion span at the OTLP receiver")
    spans = {span.span_id: span for span in otlp_receiver.spans(cascade.trace_id)}
    assert {span.service for span in spans.values()} == {f"cascade-{name}" for name in SERVICES}
    assert all(span.resource["service.version"] for span in spans.values())

    # Walking up from serving's swap reaches the upload, through every step of the cascade, in order.
    chain: list[ReceivedSpan] = []
    current: ReceivedSpan | None = swap
    while current is not None:
        chain.append(current)
        current = spans.get(current.parent_id)
    steps = [
        (span.service, span.kind) for span in reversed(chain) if span.kind != SpanKind.SPAN_KIND_INTERNAL
    ]
    consumers = [service for service, kind in steps if kind == SpanKind.SPAN_KIND_CONSUMER]
    assert consumers == ["cascade-trainer", "cascade-validator", "cascade-registry", "cascade-serving"]
    assert steps[0] == ("cascade-ingest", SpanKind.SPAN_KIND_SERVER)
    assert chain[-1].attributes["rpc.method"] == "UploadBatch"

    for span in spans.values():
        assert "grpc.health" not in span.name
        if span.kind in (SpanKind.SPAN_KIND_SERVER, SpanKind.SPAN_KIND_CLIENT):
            assert span.attributes["rpc.system"] == "grpc"
            assert span.name == f"/{span.attributes['rpc.service']}/{span.attributes['rpc.method']}"
            assert "rpc.grpc.status_code" in span.attributes
        elif span.kind in (SpanKind.SPAN_KIND_PRODUCER, SpanKind.SPAN_KIND_CONSUMER):
            assert span.attributes["messaging.system"] == "kafka"
            assert span.attributes["messaging.destination.name"].startswith("it.")
        if span.kind == SpanKind.SPAN_KIND_CONSUMER and span.name.endswith("process"):
            assert span.attributes["messaging.operation"] == "process"
            assert "messaging.kafka.message.offset" in span.attributes


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= ls)


def test_every_service_exposes_its_domain_metrics(stack: Stack, cascade: Cascade) -> None:
    model, rows = cascade.model, len(cascade.first) + len(cascade.second)
    metrics = {name: _scrape(port) for name, port in stack.config.metrics_ports.items()}

    assert _value(metrics["ingest"], "cascade_ingest_rows_total", dataset=model, outcome="accepted") == rows
    assert _value(metrics["trainer"], "cascade_trainer_runs_total", model=model, outcome="succeeded") == 2
    assert (
        _value(metrics["trainer"], "cascade_trainer_trials_total", model=model)
        == 2 * TrainingSpec().max_trials
    )
    assert (
        _value(metrics["validator"], "cascade_validator_verdicts_total", model=model, outcome="passed") >= 2
    )
    assert (
        _value(metrics["registry"], "cascade_registry_alias_moves_total", model=model, alias="champion") == 2
    )
    assert _value(metrics["serving"], "cascade_serving_swaps_total", model=model) == 2
    assert _value(metrics["serving"], "cascade_serving_loaded_version", model=model) == 2
    assert _value(metrics["monitor"], "cascade_monitor_predictions_total", model=model) >= 32
    # gRPC server metrics and FastStream's Kafka metrics, on every service.
    assert (
        _value(metrics["ingest"], "grpc_server_handled_total", grpc_method="UploadBatch", grpc_code="OK") >= 2
    )
    assert _value(metrics["registry"], "grpc_server_handled_total", grpc_method="CreateModelVersion") >= 2
    for name in ("trainer", "validator", "registry", "serving", "monitor"):
        assert _value(metrics[name], "faststream_received_messages_total") >= 2, name


def test_the_models_cli_reads_the_registry_and_moves_the_champion(stack: Stack, cascade: Cascade) -> None:
    runner = CliRunner()
    home = ["--home", str(stack.home)]  # the stack remembered its ports there

    def cli(*args: str) -> str:
        result = runner.invoke(app, [*home, "models", *args])
        assert result.exit_code == 0, result.output
        return result.output

    listed = {m["name"]: m for m in json.loads(cli("list", "--json"))}
    assert listed[cascade.model]["latest_version"] == 2
    assert listed[cascade.model]["aliases"] == {"champion": 2}
    shown = json.loads(cli("show", f"{cascade.model}/1", "--json"))
    assert shown["dataset"] == cascade.model and json.loads(shown["validation_report_json"])["passed"]
    lineage = json.loads(cli("lineage", f"{cascade.model}@champion", "--json"))
    assert len(lineage["batch_ids"]) == 2 and lineage["version"]["version"] == 2

    cli("promote", cascade.model, "1", "--reason", "canary looks better", "--actor", "alice")
    features = cascade.first.drop(columns="target").to_numpy(np.float32)[:4]
    wait_for(lambda: infer(stack, cascade.model, features)[0] == "1", 60, "serving to follow the promotion")
    cli("rollback", cascade.model, "--reason", "undo", "--actor", "alice")
    wait_for(lambda: infer(stack, cascade.model, features)[0] == "2", 60, "serving to follow the rollback")

    moves = json.loads(cli("history", cascade.model, "--json"))["moves"]
    assert [(m["from_version"], m["to_version"], m["actor"]) for m in moves] == [
        (0, 1, "validator"),
        (1, 2, "validator"),
        # The CLI calls as the stack's admin (its token in the home); what --actor claims stays beside.
        (2, 1, "admin (claimed alice)"),
        (1, 2, "admin (claimed alice)"),
    ]
    assert moves[2]["reason"] == "canary looks better"
    assert moves[3]["reason"] == "rollback from v1: undo"
    table = cli("history", cascade.model)
    assert "canary looks better" in table and "ALIAS" in table
    missing = runner.invoke(app, [*home, "models", "show", "no_such_model"])
    assert missing.exit_code == 3 and "NOT_FOUND" in missing.output  # EXIT_NOT_FOUND


def test_the_monitor_tests_served_predictions_against_the_training_data(stack: Stack) -> None:
    model = "bc_monitor"
    first, _ = _breast_cancer_batches()
    upload(stack, model, first)
    wait_for(lambda: model_ready(stack, model, "1"), CASCADE_TIMEOUT, "serving to load version 1")
    features = first.drop(columns="target").to_numpy(np.float32)
    # Shift every feature far from the training data: the monitor must call it drift.
    infer(stack, model, features[:40] * 3.0 + 100.0)

    drift = wait_for(lambda: drift_report(stack, model), 60, "the monitor's first drift report")
    assert drift.model_version == 1 and drift.predictions_seen >= 20
    assert {f.feature for f in drift.features} == set(first.columns) - {"target"}
    assert all(f.test and 0 <= f.p_value <= 1 for f in drift.features)
    assert drift.dataset_drifted


def test_a_service_killed_mid_cascade_lets_the_cascade_finish(stack: Stack) -> None:
    model = "bc_crash"
    # Big enough that training takes a moment, so the kill lands while the trainer is busy.
    x, y = make_classification(n_samples=10_000, n_features=30, n_informative=12, random_state=5)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(30)]).assign(target=y)
    log = stack.log_file("trainer")
    log_before = log.read_text() if log.exists() else ""

    upload(stack, model, frame)
    wait_for(
        lambda: f"training {model}" in log.read_text()[len(log_before) :], 60, "the trainer to start training"
    )
    stack.kill_service("trainer", signal.SIGKILL)
    killed_at = len(log.read_text())
    stack.start_service("trainer")

    wait_for(lambda: model_ready(stack, model, "1"), CASCADE_TIMEOUT, "the cascade to finish after the crash")
    after_restart = log.read_text()[killed_at:]
    # The unacknowledged data-arrived was redelivered to the new trainer process.
    assert f"training {model}" in after_restart or f"{model}@" in after_restart
    version, labels = infer(stack, model, x[:16].astype(np.float32))
    assert version == "1" and np.mean(labels == y[:16]) > 0.7


async def _dead_letters(bootstrap: str, topic: str, marker: bytes, count: int) -> list[dict[str, str]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    found: list[dict[str, str]] = []
    try:
        async with asyncio.timeout(90):
            while len(found) < count:
                record = await consumer.getone()
                if marker in (record.value or b""):
                    found.append({k: v.decode() for k, v in record.headers})
    finally:
        await consumer.stop()
    return found


# Each body carries a marker to find its dead letters by. The nested one is 10 KB: 5000 levels of
# arrays, which made json.loads recurse until the broker's decoder checked depth before parsing.
HOSTILE_BODIES = {
    "malformed": (lambda marker: b"{malformed " + marker, "ValidationError"),
    "nested 5000 deep": (
        lambda marker: b'{"marker": "' + marker + b'", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "JsonTooLarge: JSON nested 5001 levels deep is over the limit of 64",
    ),
}


@pytest.mark.parametrize("body", list(HOSTILE_BODIES))
def test_hostile_events_on_every_input_topic_are_dead_lettered_with_a_reason(stack: Stack, body: str) -> None:
    topics = Topics(stack.config.topic_prefix)
    marker = uuid.uuid4().hex.encode()
    build, reason = HOSTILE_BODIES[body]
    inputs = [RawRecords, DataArrived, ModelTrained, ModelValidated, ModelPromoted, PredictionLogged]
    bootstrap = stack.address("kafka")
    produce(bootstrap, [(topics.for_event(e), build(marker)) for e in inputs])
    # model-promoted feeds both serving and monitor; each dead-letters its own copy.
    letters = asyncio.run(_dead_letters(bootstrap, topics.dead_letter, marker, len(inputs) + 1))

    by_service = {(h[DLQ_SERVICE], h[DLQ_TOPIC]) for h in letters}
    assert by_service == {
        ("ingest", topics.for_event(RawRecords)),
        ("trainer", topics.for_event(DataArrived)),
        ("validator", topics.for_event(ModelTrained)),
        ("registry", topics.for_event(ModelValidated)),
        ("serving", topics.for_event(ModelPromoted)),
        ("monitor", topics.for_event(ModelPromoted)),
        ("monitor", topics.for_event(PredictionLogged)),
    }
    assert all(reason in h[DLQ_REASON] for h in letters)
    # Every service kept running and still answers SERVING.
    assert all(row.health == "SERVING" for row in stack.status())

    # The operator's view: `cascade dlq list` names each service's letter, `cascade status` counts it.
    runner = CliRunner()
    listed = runner.invoke(app, ["--home", str(stack.home), "dlq", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    listed_pairs = {
        (row["service"], row["source_topic"]) for row in json.loads(listed.output) if reason in row["reason"]
    }
    assert listed_pairs >= by_service
    status = runner.invoke(app, ["--home", str(stack.home), "status", "--json"])
    assert status.exit_code == 0, status.output
    rows = {row["name"]: row for row in json.loads(status.output)}
    assert rows["validator"]["dead_letters"][topics.for_event(ModelTrained)] >= 1
    assert topics.for_event(ModelTrained) in rows["validator"]["lag"]


def test_raw_records_from_any_kafka_producer_are_ingested(stack: Stack) -> None:
    topics = Topics(stack.config.topic_prefix)
    frame = load_breast_cancer(as_frame=True).frame.head(300)
    records = json.loads(frame.to_json(orient="records"))
    records[0]["mean radius"] = "oops"
    body = json.dumps({"dataset": "bc_records", "records": records}).encode()
    produce(stack.address("kafka"), [(topics.for_event(RawRecords), body)])
    wait_for(
        lambda: model_ready(stack, "bc_records", "1"), CASCADE_TIMEOUT, "the records to cascade to a model"
    )
