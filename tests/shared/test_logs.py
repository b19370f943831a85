import json
import logging
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from cascade.logs import RateLimitFilter, setup_logging


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
        logging.getLogger("cascade.services.ingest").info("stored %d rows", 3)
    logging.getLogger("cascade.services.ingest").warning("outside any span")
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


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _rate_limited(per_interval: int, clock: _Clock) -> tuple[logging.Logger, list[str]]:
    """A real logger whose handler keeps the formatted lines, behind a RateLimitFilter."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    handler = Keep()
    handler.addFilter(RateLimitFilter(handler.handle, per_interval, interval=10.0, clock=clock))
    logger = logging.getLogger(f"test.rate.{id(lines)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, lines


def test_repeats_of_one_message_kind_are_cut_to_a_few_and_a_count() -> None:
    clock = _Clock()
    log, lines = _rate_limited(3, clock)
    for attempt in range(500):  # an outage: the same error, with different arguments, many times a second
        log.error("publishing failed (attempt %d): %s", attempt, "KafkaConnectionError")
        log.info("retrying in %.1f s", 0.5)
        clock.now += 0.01
    log.warning("a different kind of message")
    assert lines[:6] == [
        "ERROR " + log.name + ": publishing failed (attempt 0): KafkaConnectionError",
        "INFO " + log.name + ": retrying in 0.5 s",
        "ERROR " + log.name + ": publishing failed (attempt 1): KafkaConnectionError",
        "INFO " + log.name + ": retrying in 0.5 s",
        "ERROR " + log.name + ": publishing failed (attempt 2): KafkaConnectionError",
        "INFO " + log.name + ": retrying in 0.5 s",
    ]
    assert lines[6:] == ["WARNING " + log.name + ": a different kind of message"]

    clock.now += 10  # the interval is over: one summary per kind, then its lines are let through again
    log.error("publishing failed (attempt %d): %s", 500, "KafkaConnectionError")
    assert lines[7:] == [
        f"ERROR {log.name}: suppressed 497 similar messages in the last 15 s: "
        "'publishing failed (attempt %d): %s'",
        f"INFO {log.name}: suppressed 497 similar messages in the last 15 s: 'retrying in %.1f s'",
        "ERROR " + log.name + ": publishing failed (attempt 500): KafkaConnectionError",
    ]


def test_a_kind_that_went_quiet_still_gets_its_summary_when_anything_else_is_logged() -> None:
    clock = _Clock()
    log, lines = _rate_limited(1, clock)
    for _ in range(5):
        log.error("broker down")
    clock.now += 11
    log.info("broker back")
    assert lines == [
        f"ERROR {log.name}: broker down",
        f"ERROR {log.name}: suppressed 4 similar messages in the last 11 s: 'broker down'",
        f"INFO {log.name}: broker back",
    ]


def test_a_limit_of_zero_lets_everything_through() -> None:
    log, lines = _rate_limited(0, _Clock())
    for _ in range(50):
        log.error("again")
    assert len(lines) == 50


def test_the_log_file_rotates_and_keeps_a_bounded_number_of_backups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "logs" / "registry.log"
    monkeypatch.setenv("CASCADE_LOG_FILE", str(path))
    monkeypatch.setenv("CASCADE_LOG_FILE_MAX_BYTES", "4000")
    monkeypatch.setenv("CASCADE_LOG_FILE_BACKUPS", "2")
    handler = setup_logging("registry", "INFO", "auto")
    try:
        for number in range(400):  # ~80 KB of distinct messages: far past 3 files of 4 KB
            logging.getLogger("cascade.services.registry").info(f"stored version {number} of some model")
    finally:
        handler.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["registry.log", "registry.log.1", "registry.log.2"]
    assert all(p.stat().st_size <= 4000 for p in path.parent.iterdir())
    newest = [json.loads(line) for line in path.read_text().splitlines()]
    assert newest[-1]["message"] == "stored version 399 of some model"
    assert {entry["service"] for entry in newest} == {"registry"}
