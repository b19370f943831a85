"""Helpers for driving the real stack from tests, as an outside client would."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pandas as pd
import tritonclient.grpc as triton
from aiokafka import AIOKafkaProducer

from cascade.grpc_io import open_blocking_channel
from cascade.stack import Stack
from cascade.stubs.cascade.ingest.v1 import ingest_pb2 as pb
from cascade.stubs.cascade.ingest.v1 import ingest_pb2_grpc
from cascade.stubs.cascade.monitor.v1 import monitor_pb2, monitor_pb2_grpc

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def upload(stack: Stack, dataset: str, frame: pd.DataFrame) -> tuple[pb.UploadBatchResponse, str]:
    """Upload a CSV batch as a traced outside client: the W3C `traceparent` it sends makes the
    cascade's trace id known to the test."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    data = frame.to_csv(index=False).encode()
    requests = [
        pb.UploadBatchRequest(
            header=pb.BatchHeader(dataset=dataset, format=pb.FILE_FORMAT_CSV, target="target")
        ),
        *(pb.UploadBatchRequest(chunk=data[i : i + 65536]) for i in range(0, len(data), 65536)),
    ]
    with open_blocking_channel(stack.address("ingest"), stack.client_security) as channel:
        response = ingest_pb2_grpc.IngestServiceStub(channel).UploadBatch(
            iter(requests), metadata=(("traceparent", f"00-{trace_id}-{span_id}-01"),), timeout=60
        )
    return response, trace_id


def infer(
    stack: Stack, model: str, rows: np.ndarray, version: str = "", output: str = "label"
) -> tuple[str, np.ndarray]:
    """(model version that answered, one output: labels by default) through tritonclient, unchanged."""
    client, headers = triton_client(stack)
    try:
        request = triton.InferInput("input", list(rows.shape), "FP32")
        request.set_data_from_numpy(rows.astype(np.float32))
        result = client.infer(
            model,
            [request],
            model_version=version,
            outputs=[triton.InferRequestedOutput(output)],
            headers=headers,
        )
        values = result.as_numpy(output)
        assert values is not None
        return result.get_response().model_version, values
    finally:
        client.close()


def triton_client(stack: Stack) -> tuple[triton.InferenceServerClient, dict[str, str]]:
    """tritonclient's gRPC client for the stack's serving, unchanged: TLS with the stack's CA (and
    the admin certificate, for mTLS) when it serves TLS; the admin token as a header for each call."""
    security = stack.client_security
    tls: dict[str, object] = {}
    if security.ca_file is not None:
        tls = {
            "ssl": True,
            "root_certificates": str(security.ca_file),
            "private_key": str(security.key_file),
            "certificate_chain": str(security.cert_file),
        }
    client = triton.InferenceServerClient(url=stack.address("serving"), **tls)
    return client, dict(security.metadata)


def model_ready(stack: Stack, model: str, version: str) -> bool:
    client, headers = triton_client(stack)
    try:
        return bool(client.is_model_ready(model, version, headers=headers))
    except Exception:
        return False
    finally:
        client.close()


def spans_of_trace(stack: Stack, trace_id: str) -> list[dict[str, object]]:
    """Every span of one trace across the services' OTLP-JSON files, with its service.name."""
    spans: list[dict[str, object]] = []
    for path in sorted(Path(stack.home, "traces").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            for resource_spans in json.loads(line).get("resourceSpans", []):
                attributes = {
                    a["key"]: a["value"].get("stringValue") for a in resource_spans["resource"]["attributes"]
                }
                for scope in resource_spans.get("scopeSpans", []):
                    for span in scope.get("spans", []):
                        if span["traceId"] == trace_id:
                            spans.append({**span, "service.name": attributes.get("service.name")})
    return spans


def produce(bootstrap: str, messages: list[tuple[str, bytes]], key: bytes = b"test") -> None:
    """Send raw bytes to topics as any outside producer would (up to 2 MiB a message)."""

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * 1024 * 1024)
        await producer.start()
        try:
            for topic, value in messages:
                await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    asyncio.run(send())


def drift_report(stack: Stack, model: str) -> monitor_pb2.DriftReport | None:
    """The monitor's latest report for `model`, or None while it has none."""
    with open_blocking_channel(stack.address("monitor"), stack.client_security) as channel:
        try:
            return monitor_pb2_grpc.MonitorServiceStub(channel).GetDriftReport(
                monitor_pb2.GetDriftReportRequest(model=model), timeout=5
            )
        except grpc.RpcError:
            return None
