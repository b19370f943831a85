import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_trace_and_span_ids(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("ingest", "INFO", "json")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("services.ingest").info("stored %d rows", 3)
    logging.getLogger("services.ingest").warning("outside any span")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    context = span.get_span_context()
    assert first["message"] == "stored 3 rows" and first["service"] == "ingest" and first["level"] == "info"
    assert first["trace_id"] == format(context.trace_id, "032x")
    assert first["span_id"] == format(context.span_id, "016x")
    assert second["trace_id"] == "" and second["level"] == "warning"


def test_text_format_appends_the_trace_id(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("trainer", "INFO", "text")
    with TracerProvider().get_tracer("test").start_as_current_span("work") as span:
        logging.getLogger("x").info("hello")
    line = capsys.readouterr().err.strip()
    assert "trainer x: hello" in line
    assert f"trace_id={format(span.get_span_context().trace_id, '032x')}" in line
