"""One real Kafka broker and one stack of the six service processes for the whole run, started by
the project's own launcher (cascade.stack) on ports apart from a developer's `cascade up`.
Tests isolate themselves by dataset/model name; the stack is stopped at the end, leaving no process."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.stack import SERVICES, Stack, StackConfig
from tests.integration.browser import Console, browser, page  # noqa: F401  (fixtures)
from tests.integration.chat import chat  # noqa: F401  (a fixture)
from tests.integration.otlp_receiver import OtlpReceiver

# Fixed test ports stay below 32768, where Linux's ephemeral range starts (ip_local_port_range): a
# port there can be the local end of any process's outgoing connection, which no "is anything
# listening" check sees, and the server's bind then fails (tests/integration/test_broker_startup.py).
TEST_PORTS = {
    "ingest": 29051,
    "trainer": 29052,
    "validator": 29053,
    "registry": 29054,
    "monitor": 29055,
    "serving": 29001,
}
METRICS_PORTS = {name: 29100 + number for number, name in enumerate(SERVICES, start=1)}


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def stack(otlp_receiver: OtlpReceiver) -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="cascade-it-"))
    config = StackConfig(
        home=home,
        kafka_port=29092,
        controller_port=29093,
        topic_prefix="it",
        ports=TEST_PORTS,
        metrics_ports=METRICS_PORTS,
        extra_env={
            # Spans go both to files (for `cascade trace`) and to the in-test OTLP receiver.
            "OTEL_TRACES_EXPORTER": "otlp_json_file,otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_receiver.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # flush spans quickly so the trace test need not wait
            "CASCADE_MONITOR_EVALUATE_EVERY": "20",
            "CASCADE_MONITOR_WINDOW_SIZE": "40",
            # The monitor's loop (test_monitor_loop.py): only *_loop models retrain on drift, after
            # two drifted reports in a row, then not again for an hour.
            "CASCADE_MONITOR_RETRAIN_MODELS": "*_loop",
            "CASCADE_MONITOR_TRIGGER_AFTER": "2",
            "CASCADE_MONITOR_COOLDOWN_SECONDS": "3600",
            # test_registry.py uploads just over this to see it refused (1 GiB, the default, is slow to send).
            "CASCADE_REGISTRY_MAX_ARTIFACT_BYTES": str(64 * 1024 * 1024),
            # test_notifications.py writes its chat destinations here (the registry re-reads it).
            "CASCADE_REGISTRY_NOTIFICATIONS_FILE": str(home / "notifications.json"),
            # test_progressive_delivery.py lets a constant predictor through the gates, for the
            # monitor to roll it back on live traffic.
            "CASCADE_VALIDATOR_MODEL_THRESHOLDS": json.dumps(
                {"progressive_bc": {"min_accuracy": 0.0, "max_regression": 1.0}}
            ),
        },
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    test_stack = Stack(config, environ=environ)
    try:
        test_stack.start(SERVICES, timeout=180)
        yield test_stack
    finally:
        test_stack.stop()
    # Kept only on request: logs and traces of a failed run are worth a look.
    if not os.environ.get("CASCADE_KEEP_TEST_STACK"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def console(stack: Stack) -> Iterator[Console]:
    """The web console (cascade ui) serving the test stack, for the browser tests."""
    started = Console(stack.home)
    yield started
    started.stop()
