"""Ingest through a real ingest process and the real broker: declared schemas and exact reports,
idempotent batches, durability under SIGKILL, a non-Python Kafka producer, and dead letters.

Datasets here have a single class, so the trainer each *data arrived* reaches refuses them at once
("at least two classes") instead of training: these tests keep the shared stack free for others."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from aiokafka import AIOKafkaConsumer

from cascade.events import DataArrived, RawRecords, Topics
from cascade.messaging import DLQ_REASON, DLQ_SERVICE
from cascade.stack import Stack, StackConfig, kafka_broker
from cascade.stubs.cascade.ingest.v1 import ingest_pb2 as pb
from cascade.stubs.cascade.ingest.v1 import ingest_pb2_grpc
from tests.ingest.test_cleaning import MIXED_CSV, MIXED_REPORT, MIXED_SCHEMA
from tests.integration.support import produce, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def ingest(stack: Stack) -> Iterator[ingest_pb2_grpc.IngestServiceStub]:
    with grpc.insecure_channel(stack.address("ingest")) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


def _upload(
    stub: ingest_pb2_grpc.IngestServiceStub,
    dataset: str,
    data: bytes,
    file_format: pb.FileFormat.ValueType = pb.FILE_FORMAT_CSV,
    target: str = "target",
) -> pb.UploadBatchResponse:
    header = pb.BatchHeader(dataset=dataset, format=file_format, target=target, source="test")
    requests = [
        pb.UploadBatchRequest(header=header),
        *(pb.UploadBatchRequest(chunk=data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)),
    ]
    response: pb.UploadBatchResponse = stub.UploadBatch(iter(requests), timeout=120)
    return response


def _versions(stub: ingest_pb2_grpc.IngestServiceStub, dataset: str) -> list[pb.DatasetVersion]:
    return list(stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset=dataset), timeout=30).versions)


def _download(stub: ingest_pb2_grpc.IngestServiceStub, dataset: str, version: str) -> pd.DataFrame:
    data, digest = b"", ""
    for chunk in stub.DownloadDatasetVersion(
        pb.DownloadDatasetVersionRequest(dataset=dataset, version=version), timeout=60
    ):
        data += chunk.data
        digest = chunk.sha256
    assert hashlib.sha256(data).hexdigest() == digest
    return pd.read_parquet(io.BytesIO(data))


def _register_mixed(stub: ingest_pb2_grpc.IngestServiceStub, dataset: str) -> None:
    from google.protobuf.json_format import ParseDict

    data = MIXED_SCHEMA.to_dict()
    data.pop("declared")
    stub.RegisterDataset(
        pb.RegisterDatasetRequest(dataset=dataset, schema=ParseDict(data, pb.DatasetSchema())), timeout=30
    )


def test_a_mixed_batch_gets_the_exact_report_and_its_rejected_rows_can_be_fetched(
    ingest: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    _register_mixed(ingest, "it_mixed")
    response = _upload(ingest, "it_mixed", MIXED_CSV, target="label")
    report = response.report
    assert response.created
    assert {
        "rows_received": report.rows_received,
        "rows_accepted": report.rows_accepted,
        "rows_repaired": report.rows_repaired,
        "rows_flagged": report.rows_flagged,
        "rows_rejected": report.rows_rejected,
        "rows_duplicate": report.rows_duplicate,
        "issues": dict(report.issues),
        "rejected": [{"row": r.row, "reason": r.reason} for r in report.rejected],
        "repaired": [{"row": r.row, "note": r.note} for r in report.repaired],
        "flagged": [{"row": r.row, "note": r.note} for r in report.flagged],
    } == MIXED_REPORT

    rejected = ingest.ListRejectedRows(
        pb.ListRejectedRowsRequest(dataset="it_mixed", batch_id=response.batch_id), timeout=30
    ).rows
    assert [(r.row, r.reason) for r in rejected] == [
        (r["row"], r["reason"]) for r in MIXED_REPORT["rejected"]
    ]
    assert json.loads(rejected[1].values_json)["smoker"] == "maybe"
    # The stored report is the same one, and the version holds exactly the accepted rows.
    (batch,) = ingest.ListBatches(pb.ListBatchesRequest(dataset="it_mixed"), timeout=30).batches
    assert batch.report == report
    assert len(_download(ingest, "it_mixed", response.dataset_version)) == report.rows_accepted


def test_the_same_batch_twice_makes_one_version_over_grpc_and_kafka(
    stack: Stack, ingest: ingest_pb2_grpc.IngestServiceStub
) -> None:
    frame = pd.DataFrame({"a": np.arange(50.0), "b": np.arange(50.0) * 2, "target": 0})
    data = frame.to_csv(index=False).encode()
    first, again = _upload(ingest, "it_twice", data), _upload(ingest, "it_twice", data)
    assert first.created and not again.created
    assert again.dataset_version == first.dataset_version and again.report == first.report
    assert [v.version for v in _versions(ingest, "it_twice")] == [first.dataset_version]

    records = json.loads(frame.head(10).to_json(orient="records"))
    body = json.dumps({"dataset": "it_twice_kafka", "records": records}).encode()
    topic = Topics(stack.config.topic_prefix).for_event(RawRecords)
    produce(stack.address("kafka"), [(topic, body), (topic, body)])

    def two_deliveries_seen() -> bool:
        # The consumer handles messages in order: once a later message is in, both copies were seen.
        probe = {"dataset": "it_twice_kafka_probe", "records": records}
        produce(stack.address("kafka"), [(topic, json.dumps(probe).encode())])
        try:
            return bool(_versions(ingest, "it_twice_kafka_probe"))
        except grpc.RpcError:
            return False

    wait_for(two_deliveries_seen, 60, "ingest to consume both copies", interval=1.0)
    assert len(_versions(ingest, "it_twice_kafka")) == 1
    batches = ingest.ListBatches(pb.ListBatchesRequest(dataset="it_twice_kafka"), timeout=30).batches
    assert len(batches) == 1 and batches[0].report.rows_accepted == 10


def test_a_sigkill_mid_upload_loses_no_acknowledged_batch_and_leaves_no_half_version(
    stack: Stack, ingest: ingest_pb2_grpc.IngestServiceStub
) -> None:
    dataset = "it_durable"
    rng = np.random.default_rng(7)
    acknowledged: dict[str, int] = {}
    for rows in (100, 200):
        frame = pd.DataFrame(rng.normal(size=(rows, 30)), columns=[f"f{i}" for i in range(30)]).assign(
            target=0
        )
        response = _upload(ingest, dataset, frame.to_csv(index=False).encode())
        acknowledged[response.dataset_version] = response.report.rows_accepted

    # A large batch (300k rows), killed while ingest receives or processes it.
    big = pd.DataFrame(rng.normal(size=(300_000, 30)), columns=[f"f{i}" for i in range(30)]).assign(target=0)
    buffer = io.BytesIO()
    big.to_parquet(buffer, index=False)
    outcome: dict[str, object] = {}

    def send() -> None:
        try:
            outcome["response"] = _upload(ingest, dataset, buffer.getvalue(), pb.FILE_FORMAT_PARQUET)
        except grpc.RpcError as error:
            outcome["error"] = error

    spool = stack.data_dir("ingest") / "spool"
    sender = threading.Thread(target=send)
    sender.start()
    # Kill once the upload has been spooled and ingest is cleaning and versioning it (or as soon
    # as the call is over, if it was quicker than this loop).
    wait_for(lambda: any(spool.glob(".upload-*")) or outcome, 60, "the upload to start", 0.01)
    wait_for(lambda: not any(spool.glob(".upload-*")) or outcome, 60, "the upload to be received", 0.01)
    stack.kill_service("ingest", signal.SIGKILL)
    sender.join(timeout=60)
    stack.start_service("ingest")

    if "response" in outcome:  # acknowledged before the kill: it must be there too
        response = outcome["response"]
        assert isinstance(response, pb.UploadBatchResponse)
        acknowledged[response.dataset_version] = 300_000
    with grpc.insecure_channel(stack.address("ingest")) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        versions = _versions(stub, dataset)
        present = {v.version: v for v in versions}
        assert set(acknowledged) <= set(present)
        # Every version there is whole: its rows download, verified, and add up.
        total = 0
        for version in versions:
            total = version.rows
            assert len(_download(stub, dataset, version.version)) == version.rows
        assert total in (300, 300_300)
        # No half-written file: nothing temporary, and every segment file belongs to a version.
        segments = stack.data_dir("ingest") / "segments"
        assert not list(segments.glob(".tmp-*"))
        named = {
            segment
            for d in stub.ListDatasets(pb.ListDatasetsRequest(), timeout=30).datasets
            for v in _versions(stub, d.dataset)
            for segment in v.segments
        }
        assert {p.stem for p in segments.glob("*.parquet")} == named
        # Sending the killed batch again completes it.
        retried = _upload(stub, dataset, buffer.getvalue(), pb.FILE_FORMAT_PARQUET)
        assert _versions(stub, dataset)[-1].rows == 300_300
        assert retried.dataset_version == _versions(stub, dataset)[-1].version


def test_a_record_from_the_kafka_console_producer_is_ingested(
    stack: Stack, ingest: ingest_pb2_grpc.IngestServiceStub
) -> None:
    topic = Topics(stack.config.topic_prefix).for_event(RawRecords)
    line = json.dumps(
        {
            "dataset": "it_console",
            "records": [{"x": 1.5, "y": 2, "target": 0}, {"x": 2.5, "y": 3, "target": 0}],
        }
    )
    completed = subprocess.run(
        [
            shutil.which("java") or "java",
            "-cp",
            f"{stack.kafka.libs_dir}/*",
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            stack.address("kafka"),
            "--topic",
            topic,
        ],
        input=line + "\n",
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]

    def version() -> pb.DatasetVersion | None:
        try:
            return _versions(ingest, "it_console")[-1]
        except (grpc.RpcError, IndexError):
            return None

    ingested = wait_for(version, 60, "the console producer's record to be ingested")
    assert (ingested.rows, list(ingested.features)) == (2, ["x", "y"])
    batches = ingest.ListBatches(pb.ListBatchesRequest(dataset="it_console"), timeout=30).batches
    assert batches[0].source == "kafka"


def test_malformed_wrong_schema_and_oversized_messages_are_dead_lettered_with_their_reason(
    stack: Stack, ingest: ingest_pb2_grpc.IngestServiceStub
) -> None:
    topics = Topics(stack.config.topic_prefix)
    marker = uuid.uuid4().hex
    _register_mixed(ingest, "it_dlq")
    wrong_fields = {"dataset": "it_dlq", "rows": [{"a": 1}], "source": marker}
    lacking_columns = {"dataset": "it_dlq", "records": [{"age": 1, "label": 0}], "source": marker}
    oversized = {
        "dataset": "it_dlq_big",
        "records": [{"x": i, "pad": "x" * 1000, "target": 0} for i in range(700)],
        "source": marker,
    }
    messages = [
        b'{"dataset": "it_dlq", "records": [' + marker.encode(),
        json.dumps(wrong_fields).encode(),
        json.dumps(lacking_columns).encode(),
        json.dumps(oversized).encode(),
    ]
    topic = topics.for_event(RawRecords)
    produce(stack.address("kafka"), [(topic, m) for m in messages])
    letters = asyncio.run(_dead_letters(stack.address("kafka"), topics.dead_letter, marker.encode(), 4))

    assert all(h[DLQ_SERVICE] == "ingest" for h in letters.values())
    reasons = [letters[m][DLQ_REASON] for m in messages]
    assert reasons[0].startswith("ValidationError") and "Invalid JSON" in reasons[0]
    assert "ValidationError" in reasons[1] and "records" in reasons[1]
    assert (
        "InvalidArgument" in reasons[2] and "batch lacks columns ['colour', 'smoker', 'income']" in reasons[2]
    )
    assert "InvalidArgument" in reasons[3] and "exceeds the limit of 524288 bytes" in reasons[3]
    with pytest.raises(grpc.RpcError):
        _versions(ingest, "it_dlq_big")


async def _dead_letters(bootstrap: str, topic: str, marker: bytes, count: int) -> dict[bytes, dict[str, str]]:
    """Dead letters whose body carries `marker`, by body."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        fetch_max_bytes=4 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    found: dict[bytes, dict[str, str]] = {}
    try:
        async with asyncio.timeout(60):
            while len(found) < count:
                record = await consumer.getone()
                if marker in (record.value or b""):
                    found[record.value or b""] = {k: v.decode() for k, v in record.headers}
    finally:
        await consumer.stop()
    return found


def test_a_csv_with_a_malformed_row_stores_the_rest_and_reports_the_line(
    ingest: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    # Line 4 has a field too many, line 6 one too few; the file's other rows make the version.
    data = b"a,b,target\n1,2,0\n3,4,0\n5,6,7,0\n8,9,0\n10,0\n11,12,0\n"
    response = _upload(ingest, "it_bad_row", data)
    report = response.report
    assert response.created and response.dataset_version
    assert (report.rows_received, report.rows_accepted, report.rows_rejected) == (6, 4, 2)
    assert [(r.row, r.reason) for r in report.rejected] == [
        (4, "too many fields: 4, the header has 3"),
        (6, "too few fields: 2, the header has 3"),
    ]
    stored = _download(ingest, "it_bad_row", response.dataset_version)
    assert stored["a"].tolist() == [1.0, 3.0, 8.0, 11.0]
    rejected = ingest.ListRejectedRows(
        pb.ListRejectedRowsRequest(dataset="it_bad_row", batch_id=response.batch_id), timeout=30
    ).rows
    assert [r.row for r in rejected] == [4, 6]
    assert json.loads(rejected[0].values_json) == {"fields": ["5", "6", "7", "0"]}


def _wide_csv(columns: int) -> bytes:
    """The issue's wide CSV: 20,000 feature columns and a target, one row of zeros (about 169 KB)."""
    header = ",".join([*(f"f{i}" for i in range(columns)), "target"])
    return (header + "\n" + ",".join(["0"] * (columns + 1)) + "\n" + ",".join(["1"] * (columns + 1))).encode()


def test_a_wide_csv_is_invalid_argument_naming_the_limit_and_ingest_keeps_answering(
    ingest: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    data = _wide_csv(20_000)
    assert 150_000 < len(data) < 250_000
    answered: list[int] = []
    failed: list[grpc.RpcError] = []
    stop = threading.Event()

    def other_calls() -> None:
        # Ingest's other RPCs meanwhile, each with a 1 s deadline: an answer within it is the behaviour.
        while not stop.is_set():
            try:
                ingest.ListDatasets(pb.ListDatasetsRequest(), timeout=1.0)
                answered.append(1)
            except grpc.RpcError as error:
                failed.append(error)

    caller = threading.Thread(target=other_calls)
    caller.start()
    try:
        for _ in range(3):  # a retry fails the same clear way
            with pytest.raises(grpc.RpcError) as refused:
                _upload(ingest, "it_wide", data)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "20001 columns; the limit is 1000" in (refused.value.details() or "")
    finally:
        stop.set()
        caller.join(timeout=30)
    assert answered and not failed
    with pytest.raises(grpc.RpcError) as missing:
        _versions(ingest, "it_wide")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def ingest_alone() -> Iterator[Stack]:
    """Kafka and ingest alone, in a home and on ports of their own: this test stops the broker."""
    home = Path(tempfile.mkdtemp(prefix="cascade-ingest-outage-"))
    config = StackConfig(
        home=home,
        kafka_port=23092,
        controller_port=23093,
        topic_prefix="outage",
        ports={"ingest": 23051},
        metrics_ports={},
    )
    stack = Stack(config, environ={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})
    try:
        stack.start(["ingest"], timeout=180)
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


async def _data_arrived(bootstrap: str, topic: str, version: str) -> dict[str, object]:
    """The data-arrived event of `version`, read from the topic's start (a minute at most)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        async with asyncio.timeout(120):
            while True:
                record = await consumer.getone()
                event: dict[str, object] = json.loads(record.value or b"{}")
                if event.get("dataset_version") == version:
                    return event
    finally:
        await consumer.stop()


def test_an_upload_while_kafka_is_down_answers_event_pending_and_cascades_when_kafka_is_back(
    ingest_alone: Stack,
) -> None:
    stack = ingest_alone
    topic = Topics(stack.config.topic_prefix).for_event(DataArrived)
    frame = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0) * 3, "target": 0})
    with grpc.insecure_channel(stack.address("ingest")) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        before = _upload(stub, "it_outage", frame.iloc[:10].to_csv(index=False).encode())
        assert before.created and not before.event_pending  # Kafka is up: published at once

        kafka_broker.stop_cluster(stack.kafka)
        data = frame.iloc[10:].to_csv(index=False).encode()
        header = pb.BatchHeader(dataset="it_outage", format=pb.FILE_FORMAT_CSV, target="target")
        requests = [pb.UploadBatchRequest(header=header), pb.UploadBatchRequest(chunk=data)]
        # A 1 s deadline: the answer comes at once, with the stored version, not at the deadline.
        during = stub.UploadBatch(iter(requests), timeout=1.0)
        assert during.created and during.dataset_version and during.event_pending
        assert during.report.rows_accepted == 10
        retried = stub.UploadBatch(iter(requests), timeout=1.0)  # never INTERNAL, nor a new version
        assert (retried.created, retried.dataset_version, retried.event_pending) == (
            False,
            during.dataset_version,
            True,
        )
        assert _versions(stub, "it_outage")[-1].version == during.dataset_version

        stack.start_kafka(timeout=120)
        event = asyncio.run(_data_arrived(stack.address("kafka"), topic, during.dataset_version))
        assert event["rows"] == 20 and event["parent_version"] == before.dataset_version
        assert "profile" not in event and "features" not in event
        # Once the relay has published it, a retry finds nothing pending.
        assert wait_for(
            lambda: not stub.UploadBatch(iter(requests), timeout=5.0).event_pending,
            60,
            "the outbox to mark the event published",
            interval=0.5,
        )
