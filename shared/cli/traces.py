"""`cascade trace`'s reading of span files: cascade.traces, with its TraceError turned into the
CLI's CliError (a one-line message, exit code 1) rather than a traceback."""

from __future__ import annotations

from pathlib import Path

from cascade import traces
from cascade.cli.errors import CliError
from cascade.traces import Span, TraceSummary, waterfall

__all__ = ["Span", "find_trace", "load_spans", "recent_traces", "waterfall"]


def load_spans(source: Path) -> list[Span]:
    try:
        return traces.load_spans(source)
    except traces.TraceError as error:
        raise CliError(str(error)) from error


def find_trace(spans: list[Span], trace_id: str) -> list[Span]:
    try:
        return traces.find_trace(spans, trace_id)
    except traces.TraceError as error:
        raise CliError(str(error)) from error


def recent_traces(spans: list[Span], limit: int = 10, min_services: int = 2) -> list[TraceSummary]:
    return traces.recent_traces(spans, limit, min_services)
