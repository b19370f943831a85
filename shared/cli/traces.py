"""Read OTLP-JSON span files (the Collector's file-exporter format, which Cascade's
`otlp_json_file` exporter writes) and draw one trace as a waterfall, with no backend."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade.cli.errors import CliError

__all__ = ["Span", "find_trace", "load_spans", "recent_traces", "waterfall"]

_BAR_WIDTH = 32


@dataclass
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
    children: list[Span] = field(default_factory=list)

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


def load_spans(source: Path) -> list[Span]:
    """Every span in a file, or in every *.jsonl file of a directory."""
    files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    if not files or not all(f.is_file() for f in files):
        raise CliError(f"no OTLP-JSON span files at {source}")
    spans: list[Span] = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                spans.extend(_spans_of_document(json.loads(line)))
            except (ValueError, KeyError) as error:
                raise CliError(f"{path}:{number} is not an OTLP-JSON line: {error}") from error
    return spans


def find_trace(spans: list[Span], trace_id: str) -> list[Span]:
    """The spans of the one trace whose id starts with `trace_id` (hex, at least 6 digits)."""
    trace_id = trace_id.lower()
    if len(trace_id) < 6:
        raise CliError("give at least the first 6 hex digits of the trace id")
    ids = {span.trace_id for span in spans if span.trace_id.startswith(trace_id)}
    if not ids:
        raise CliError(f"no trace {trace_id} in the span files")
    if len(ids) > 1:
        raise CliError(f"{trace_id} matches {len(ids)} traces; give more digits")
    (full_id,) = ids
    return [span for span in spans if span.trace_id == full_id]


def recent_traces(
    spans: list[Span], limit: int = 10, min_services: int = 2
) -> list[tuple[str, float, int, set[str], str]]:
    """(trace id, start, span count, services, root span name) of the latest traces that cross at
    least `min_services` services (a cascade does; a lone inference call does not)."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    rows = []
    for trace_id, members in by_trace.items():
        if len({m.service for m in members}) < min_services:
            continue
        ids = {m.span_id for m in members}
        root = min((m for m in members if m.parent_id not in ids), key=lambda m: m.start_ns)
        start = min(m.start_ns for m in members) / 1e9
        rows.append((trace_id, start, len(members), {m.service for m in members}, root.name))
    return sorted(rows, key=lambda row: row[1], reverse=True)[:limit]


def _tree(spans: list[Span]) -> list[Span]:
    by_id = {span.span_id: span for span in spans}
    roots = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(span.parent_id)
        if parent is None:
            roots.append(span)
        else:
            parent.children.append(span)
    return roots


def waterfall(spans: list[Span]) -> list[str]:
    """Lines of a waterfall: offset, duration, service, indented span name and a timeline bar."""
    start = min(span.start_ns for span in spans)
    total = max(max(span.end_ns for span in spans) - start, 1)
    rows: list[tuple[Span, str]] = []

    def walk(span: Span, depth: int) -> None:
        flag = " !" if span.status == "error" else ""
        rows.append((span, f"{'  ' * depth}{span.name} ({span.kind}){flag}"))
        for child in span.children:
            walk(child, depth + 1)

    for root in _tree(spans):
        walk(root, 0)
    label_width = max(len(label) for _, label in rows)
    services = {span.service for span in spans}
    lines = [
        f"trace {spans[0].trace_id}: {len(spans)} spans, {len(services)} services, {total / 1e9:.3f} s",
        f"{'offset':>9} {'duration':>9}  {'service':<18} {'span':<{label_width}} timeline",
    ]
    for span, label in rows:
        left = min(int(_BAR_WIDTH * (span.start_ns - start) / total), _BAR_WIDTH - 1)
        width = max(1, int(_BAR_WIDTH * (span.end_ns - span.start_ns) / total))
        bar = " " * left + "█" * min(width, _BAR_WIDTH - left)
        lines.append(
            f"{(span.start_ns - start) / 1e9:>8.3f}s {span.seconds:>8.3f}s  {span.service:<18} "
            f"{label:<{label_width}} |{bar:<{_BAR_WIDTH}}|"
        )
    return lines
