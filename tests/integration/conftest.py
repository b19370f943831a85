"""One real Kafka broker and one stack of the six service processes for the whole run, started by
the project's own launcher (shared.cli.stack) on ports apart from a developer's `cascade up`.
Tests isolate themselves by dataset/model name; the stack is stopped at the end, leaving no process."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.cli.stack import SERVICES, Stack, StackConfig

TEST_PORTS = {
    "ingest": 29051,
    "trainer": 29052,
    "validator": 29053,
    "registry": 29054,
    "monitor": 29055,
    "serving": 29001,
}


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="cascade-it-"))
    config = StackConfig(
        home=home,
        kafka_port=29092,
        controller_port=29093,
        topic_prefix="it",
        ports=TEST_PORTS,
        extra_env={
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # flush spans quickly so the trace test need not wait
            "CASCADE_MONITOR_EVALUATE_EVERY": "20",
            "CASCADE_MONITOR_WINDOW_SIZE": "40",
        },
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    test_stack = Stack(config, environ=environ)
    try:
        test_stack.start(SERVICES, timeout=180)
        yield test_stack
    finally:
        test_stack.stop()
