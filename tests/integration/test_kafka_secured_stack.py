"""The six services as they are, on a broker that speaks SASL_SSL only: StackConfig(kafka_security=
True) and nothing else secured, so this proves the Kafka side alone (test_secured_stack.py runs it
with gRPC TLS and auth too). The CLI's own Kafka readers (dlq, status) reach the broker the same way.
Its own home and ports (34xxx), apart from the suite's stack and test_kafka_security.py's broker."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from shared.cli.main import app
from shared.cli.stack import SERVICES, Stack, StackConfig
from tests.integration.support import infer, model_ready, upload, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PORTS = {
    "ingest": 34051,
    "trainer": 34052,
    "validator": 34053,
    "registry": 34054,
    "monitor": 34055,
    "serving": 34001,
}
MODEL = "bc_kafka_secured"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="cascade-kafka-secured-"))
    config = StackConfig(
        home=home,
        kafka_port=34192,
        controller_port=34193,
        topic_prefix="ksec",
        ports=PORTS,
        metrics_ports={},
        kafka_security=True,
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    secured = Stack(config, environ=environ)
    try:
        secured.start(SERVICES, timeout=240)
        yield secured
    finally:
        secured.stop()
    if not os.environ.get("CASCADE_KEEP_TEST_STACK"):
        shutil.rmtree(home, ignore_errors=True)


def test_the_cascade_runs_over_sasl_ssl_and_the_cli_reads_kafka(stack: Stack) -> None:
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=11).reset_index(drop=True)
    response, _ = upload(stack, MODEL, frame)
    assert response.created
    wait_for(lambda: model_ready(stack, MODEL, "1"), 180, "the cascade over SASL_SSL to serve version 1")
    version, labels = infer(stack, MODEL, frame.drop(columns="target").to_numpy(np.float32)[:16])
    assert version == "1" and np.mean(labels == frame["target"].to_numpy()[:16]) > 0.8

    # The CLI finds the stack's Kafka settings in its home: lag per service comes from the broker.
    status = CliRunner().invoke(app, ["--home", str(stack.home), "status", "--json"])
    assert status.exit_code == 0, status.output
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert rows["trainer"]["lag"] is not None, status.output
    assert stack.kafka_password_file().read_text().strip() not in status.output
    listed = CliRunner().invoke(app, ["--home", str(stack.home), "dlq", "list"])
    assert listed.exit_code == 0, listed.output


def test_the_stacks_broker_refuses_a_plaintext_client(stack: Stack) -> None:
    async def connect() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=stack.address("kafka"), request_timeout_ms=5000)
        try:
            await consumer.start()
        finally:
            await consumer.stop()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(connect())
