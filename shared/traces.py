"""Read OTLP-JSON span files (the Collector's file-exporter format, which Cascade's
`otlp_json_file` exporter writes) and draw one trace as a waterfall, with no backend.

The library half of `cascade trace` and the console's Traces page: pure functions over files and
spans. A file that cannot be read, or a trace id that names no trace (or several), is a
`TraceError` whose message says what to do.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "Span",
    "TimelineRow",
    "TraceError",
    "TraceSummary",
    "find_trace",
    "label",
    "load_spans",
    "recent_traces",
    "timeline",
    "waterfall",
]

_BAR_WIDTH = 32


class TraceError(ValueError):
    """No span files where one looked, a line that is not OTLP-JSON, or a trace id that does not name
    exactly one trace; the message says which."""


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def _value(attribute_value: dict[str, Any]) -> Any:
    return next(iter(attribute_value.values()), None)


def _spans_of_document(document: dict[str, Any]) -> Iterable[Span]:
    for resource_spans in document.get("resourceSpans", []):
        resource = {
            a["key"]: _value(a["value"]) for a in resource_spans.get("resource", {}).get("attributes", [])
        }
        service = str(resource.get("service.name", "?"))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for raw in scope_spans.get("spans", []):
                yield Span(
                    trace_id=raw["traceId"],
                    span_id=raw["spanId"],
                    parent_id=raw.get("parentSpanId", ""),
                    name=raw.get("name", ""),
                    kind=raw.get("kind", "").removeprefix("SPAN_KIND_").lower(),
                    service=service,
                    start_ns=int(raw["startTimeUnixNano"]),
                    end_ns=int(raw["endTimeUnixNano"]),
                    status=raw.get("status", {}).get("code", "").removeprefix("STATUS_CODE_").lower(),
                    attributes={a["key"]: _value(a["value"]) for a in raw.get("attributes", [])},
                )


def load_spans(source: Path, *, tail_bytes: int | None = None) -> list[Span]:
    """Every span in a file, or in every *.jsonl file of a directory; with `tail_bytes`, only
    those in the last `tail_bytes` of each file (the latest spans, from the first whole line)."""
    files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    if not files or not all(f.is_file() for f in files):
        raise TraceError(f"no OTLP-JSON span files at {source}")
    spans: list[Span] = []
    for path in files:
        text, first_line = _read(path, tail_bytes)
        lines = text.splitlines()
        for number, line in enumerate(lines, start=first_line):
            if not line.strip():
                continue
            try:
                spans.extend(_spans_of_document(json.loads(line)))
            except (ValueError, KeyError) as error:
                if number == first_line + len(lines) - 1 and not text.endswith("\n"):
                    break  # a service is still writing this line: it is read next time
                where = f"{path}:{number}" if first_line else f"{path} (near its end)"
                raise TraceError(f"{where} is not an OTLP-JSON line: {error}") from error
    return spans


def _read(path: Path, tail_bytes: int | None) -> tuple[str, int]:
    """A file's text, or its last `tail_bytes` from the first whole line, and the number of its
    first line (0 when not known: the lines before the tail were not counted)."""
    with path.open("rb") as file:
        size = file.seek(0, 2)
        if tail_bytes is None or size <= tail_bytes:
            file.seek(0)
            return file.read().decode("utf-8"), 1
        file.seek(size - tail_bytes - 1)
        data = file.read()
    # The byte before the tail tells whether the tail starts a line; otherwise drop the partial one.
    start = 1 if data[:1] == b"\n" else data.find(b"\n") + 1
    return data[start:].decode("utf-8") if start else "", 0


def find_trace(spans: list[Span], trace_id: str) -> list[Span]:
    """The spans of the one trace whose id starts with `trace_id` (hex, at least 6 digits)."""
    trace_id = trace_id.lower()
    if len(trace_id) < 6:
        raise TraceError("give at least the first 6 hex digits of the trace id")
    ids = {span.trace_id for span in spans if span.trace_id.startswith(trace_id)}
    if not ids:
        raise TraceError(f"no trace {trace_id} in the span files")
    if len(ids) > 1:
        raise TraceError(f"{trace_id} matches {len(ids)} traces; give more digits")
    (full_id,) = ids
    return [span for span in spans if span.trace_id == full_id]


class TraceSummary(NamedTuple):
    """One trace in a listing: its id, when it began (Unix seconds), how many spans it has, the
    services it crossed and the name of its first root span."""

    trace_id: str
    started: float
    spans: int
    services: set[str]
    root: str


def recent_traces(spans: list[Span], limit: int = 10, min_services: int = 2) -> list[TraceSummary]:
    """The latest traces, newest first, that cross at least `min_services` services (a cascade
    does; a lone inference call does not)."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    rows = []
    for trace_id, members in by_trace.items():
        services = {m.service for m in members}
        if len(services) < min_services:
            continue
        ids = {m.span_id for m in members}
        roots = [m for m in members if m.parent_id not in ids] or members  # a cycle has no root
        root = min(roots, key=lambda m: m.start_ns)
        start = min(m.start_ns for m in members) / 1e9
        rows.append(TraceSummary(trace_id, start, len(members), services, root.name))
    return sorted(rows, key=lambda row: row.started, reverse=True)[:limit]


class TimelineRow(NamedTuple):
    """One span of a trace in tree order: how deep it sits under its root, and its start offset
    and duration in seconds from the trace's first span."""

    span: Span
    depth: int
    offset: float
    duration: float


def timeline(spans: list[Span]) -> list[TimelineRow]:
    """A trace's spans in tree order (each parent before its children, siblings by start), with
    offsets from the first span's start. A span whose parent is not among them is a root."""
    by_id = {span.span_id: span for span in spans}
    children: dict[str, list[Span]] = defaultdict(list)
    roots = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        if span.parent_id in by_id and span.parent_id != span.span_id:
            children[span.parent_id].append(span)
        else:
            roots.append(span)
    start = min((span.start_ns for span in spans), default=0)
    rows: list[TimelineRow] = []
    # Iterative, so a deep trace cannot exhaust the recursion limit; `seen` guards a malformed
    # file whose parent links form a cycle.
    stack = [(root, 0) for root in reversed(roots)]
    seen: set[str] = set()
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        rows.append(TimelineRow(span, depth, (span.start_ns - start) / 1e9, span.seconds))
        stack.extend((child, depth + 1) for child in reversed(children[span.span_id]))
    return rows


def waterfall(spans: list[Span]) -> list[str]:
    """Lines of a waterfall: offset, duration, service, indented span name and a timeline bar."""
    if not spans:
        raise TraceError("a waterfall needs at least one span")
    start = min(span.start_ns for span in spans)
    total = max(max(span.end_ns for span in spans) - start, 1)
    rows = [(row, f"{'  ' * row.depth}{label(row.span)}") for row in timeline(spans)]
    label_width = max(len(text) for _, text in rows)
    services = {span.service for span in spans}
    lines = [
        f"trace {spans[0].trace_id}: {len(spans)} spans, {len(services)} services, {total / 1e9:.3f} s",
        f"{'offset':>9} {'duration':>9}  {'service':<18} {'span':<{label_width}} timeline",
    ]
    for row, text in rows:
        span = row.span
        left = min(int(_BAR_WIDTH * (span.start_ns - start) / total), _BAR_WIDTH - 1)
        width = max(1, int(_BAR_WIDTH * (span.end_ns - span.start_ns) / total))
        bar = " " * left + "█" * min(width, _BAR_WIDTH - left)
        lines.append(
            f"{row.offset:>8.3f}s {row.duration:>8.3f}s  {span.service:<18} "
            f"{text:<{label_width}} |{bar:<{_BAR_WIDTH}}|"
        )
    return lines


def label(span: Span) -> str:
    """A span's name with its kind, and a mark when it ended in error."""
    flag = " !" if span.status == "error" else ""
    return f"{span.name} ({span.kind}){flag}"
