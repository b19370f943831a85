from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from typer.testing import CliRunner

from cascade.cli.errors import CliError
from cascade.cli.main import app
from cascade.cli.traces import find_trace, load_spans, recent_traces, waterfall
from cascade.telemetry import OtlpJsonFileSpanExporter


def _write_cascade(directory: Path) -> str:
    """Two services' spans of one trace, written by the real exporter into two files."""
    ingest = TracerProvider(resource=Resource.create({"service.name": "cascade-ingest"}))
    ingest.add_span_processor(SimpleSpanProcessor(OtlpJsonFileSpanExporter(directory / "ingest.jsonl")))
    trainer = TracerProvider(resource=Resource.create({"service.name": "cascade-trainer"}))
    trainer.add_span_processor(SimpleSpanProcessor(OtlpJsonFileSpanExporter(directory / "trainer.jsonl")))
    with (
        ingest.get_tracer("t").start_as_current_span("UploadBatch", kind=SpanKind.SERVER) as root,
        ingest.get_tracer("t").start_as_current_span("data-arrived publish", kind=SpanKind.PRODUCER),
        trainer.get_tracer("t").start_as_current_span("data-arrived process", kind=SpanKind.CONSUMER),
    ):
        pass
    with ingest.get_tracer("t").start_as_current_span("lonely health call"):
        pass
    return format(root.get_span_context().trace_id, "032x")


def test_a_trace_is_drawn_as_a_tree_across_services(tmp_path: Path) -> None:
    trace_id = _write_cascade(tmp_path)
    spans = find_trace(load_spans(tmp_path), trace_id[:8])
    lines = waterfall(spans)
    assert lines[0].startswith(f"trace {trace_id}: 3 spans, 2 services")
    body = lines[2:]
    assert [line.split()[2] for line in body] == ["cascade-ingest", "cascade-ingest", "cascade-trainer"]
    names = [line[line.index("cascade-") + 19 :].split("|")[0].rstrip() for line in body]
    assert names == [
        "UploadBatch (server)",
        "  data-arrived publish (producer)",
        "    data-arrived process (consumer)",
    ]


def test_recent_traces_lists_cascades_not_lone_calls(tmp_path: Path) -> None:
    trace_id = _write_cascade(tmp_path)
    listed = recent_traces(load_spans(tmp_path))
    assert [(row[0], row[2], row[4]) for row in listed] == [(trace_id, 3, "UploadBatch")]
    assert len(recent_traces(load_spans(tmp_path), min_services=1)) == 2


def test_unknown_or_too_short_ids_are_clear_errors(tmp_path: Path) -> None:
    _write_cascade(tmp_path)
    spans = load_spans(tmp_path)
    with pytest.raises(CliError, match="no trace"):
        find_trace(spans, "ffffffffffff")
    with pytest.raises(CliError, match="at least the first 6"):
        find_trace(spans, "ab")
    with pytest.raises(CliError, match="no OTLP-JSON span files"):
        load_spans(tmp_path / "empty")


def test_cascade_trace_command_prints_the_waterfall(tmp_path: Path) -> None:
    trace_id = _write_cascade(tmp_path / "traces")
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "trace", trace_id])
    assert result.exit_code == 0, result.output
    assert "data-arrived process (consumer)" in result.output
    listing = CliRunner().invoke(app, ["--home", str(tmp_path), "trace"])
    assert trace_id in listing.output
    missing = CliRunner().invoke(app, ["--home", str(tmp_path), "trace", "abcdef0123"])
    assert missing.exit_code == 1 and "no trace abcdef0123" in missing.output
