"""cascade.traces: span files read into spans, a trace found by its id's first digits, the latest
cascades listed, and one trace laid out in tree order and drawn as a text waterfall."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from cascade.telemetry import OtlpJsonFileSpanExporter
from cascade.traces import TraceError, find_trace, load_spans, recent_traces, timeline, waterfall


def write_cascade(directory: Path) -> str:
    """Two services' spans of one trace, written by the real exporter into two files, and a lone
    single-service call; the cascade's trace id."""
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
    trace_id = write_cascade(tmp_path)
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


def test_the_timeline_puts_parents_first_with_offsets_from_the_first_span(tmp_path: Path) -> None:
    trace_id = write_cascade(tmp_path)
    spans = find_trace(load_spans(tmp_path), trace_id)
    rows = timeline(spans)
    assert [(row.span.name, row.depth) for row in rows] == [
        ("UploadBatch", 0),
        ("data-arrived publish", 1),
        ("data-arrived process", 2),
    ]
    assert rows[0].offset == 0.0
    assert all(row.offset >= 0 and row.duration >= 0 for row in rows)
    # Laying out twice gives the same rows (the spans are not changed by it).
    assert timeline(spans) == rows


def test_recent_traces_lists_cascades_not_lone_calls(tmp_path: Path) -> None:
    trace_id = write_cascade(tmp_path)
    (listed,) = recent_traces(load_spans(tmp_path))
    assert (listed.trace_id, listed.spans, listed.root) == (trace_id, 3, "UploadBatch")
    assert listed.services == {"cascade-ingest", "cascade-trainer"}
    assert len(recent_traces(load_spans(tmp_path), min_services=1)) == 2


def test_unknown_or_too_short_ids_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    write_cascade(tmp_path)
    spans = load_spans(tmp_path)
    with pytest.raises(TraceError, match="no trace"):
        find_trace(spans, "ffffffffffff")
    with pytest.raises(TraceError, match="at least the first 6"):
        find_trace(spans, "ab")
    with pytest.raises(TraceError, match="no OTLP-JSON span files"):
        load_spans(tmp_path / "empty")


def test_a_line_still_being_written_is_left_for_later_but_a_broken_line_is_an_error(tmp_path: Path) -> None:
    write_cascade(tmp_path)
    before = len(load_spans(tmp_path))
    ingest = tmp_path / "ingest.jsonl"
    with ingest.open("a") as out:
        out.write('{"resourceSpans": [')  # a service mid-write: no newline yet
    assert len(load_spans(tmp_path)) == before
    with ingest.open("a") as out:
        out.write("\n" + json.dumps({"resourceSpans": []}) + "\n")
    with pytest.raises(TraceError, match=r"ingest.jsonl:\d+ is not an OTLP-JSON line"):
        load_spans(tmp_path)


def test_a_tail_read_gives_the_latest_spans_from_the_first_whole_line(tmp_path: Path) -> None:
    write_cascade(tmp_path)
    ingest = tmp_path / "ingest.jsonl"
    lines = ingest.read_text().splitlines(keepends=True)
    assert len(lines) == 3  # UploadBatch's publish, UploadBatch, the lonely call: one export each
    last = lines[-1].encode()
    everything = load_spans(ingest)
    # A tail one byte longer than the last line starts inside the line before: that one is skipped.
    tail = load_spans(ingest, tail_bytes=len(last) + 1)
    assert [span.name for span in tail] == ["lonely health call"] == [everything[-1].name]
    assert [span.name for span in load_spans(ingest, tail_bytes=len(last))] == ["lonely health call"]
    assert load_spans(ingest, tail_bytes=10**9) == everything
    assert load_spans(ingest, tail_bytes=5) == []
