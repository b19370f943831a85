"""The console's Traces page: one cascade's spans across the services, as `cascade trace` draws
them, read from the services' OTLP-JSON span files (the stack's traces directory); no backend.

    Recent cascades  the latest traces that cross three services or more (all, when asked): an
                     upload's cascade does; a read one service makes of another (the console's
                     own Lineage page, registry -> ingest) or a logged prediction does not
    Waterfall        one trace as a chart (a bar per span: start offset and duration, by service)
                     and as the text waterfall of `cascade trace`

Query parameter ?trace=<the first 6 or more hex digits of a trace id> chooses the trace.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from cascade.console.connection import stack_view
from cascade.traces import (
    Span,
    TraceError,
    TraceSummary,
    find_trace,
    label,
    load_spans,
    recent_traces,
    timeline,
    waterfall,
)

__all__ = ["render", "timeline_frame"]

TRACES_LISTED = 20
# A cascade crosses at least ingest, the trainer and the validator (or the registry).
CASCADE_SERVICES = 3
# Span files grow for as long as a stack runs; the page reads the latest spans of each.
TAIL_BYTES = 32 * 1024 * 1024
_CACHE_SECONDS = 5
_INDENT = "\u00a0\u00a0"
_ROW_PIXELS = 22


def render() -> None:
    st.title("Traces")
    directory = stack_view().traces_dir
    if directory is None or not directory.is_dir() or not any(directory.glob("*.jsonl")):
        where = f" ({directory})" if directory is not None else ""
        st.info(
            f"No span files to read{where}. The services write them when started with "
            "OTEL_TRACES_EXPORTER=otlp_json_file (`cascade up` does); start the console with "
            "`cascade --home HOME ui`, or set CASCADE_CONSOLE_TRACES_DIR."
        )
        return
    try:
        spans = _spans(str(directory), _signature(directory))
    except TraceError as error:
        st.error(f"Reading the span files: {error}")
        return
    show_all = st.checkbox(
        "Include traces across fewer than three services (inference calls, reads, lone requests)",
        key="traces_all",
    )
    listed = recent_traces(spans, limit=TRACES_LISTED, min_services=1 if show_all else CASCADE_SERVICES)
    _listing(listed)
    trace_id = _choose(listed)
    if not trace_id:
        return
    try:
        members = find_trace(spans, trace_id)
    except TraceError as error:
        st.error(str(error))
        return
    _waterfall(members)


@st.cache_data(ttl=_CACHE_SECONDS, show_spinner=False, max_entries=4)
def _spans(directory: str, signature: tuple[tuple[str, int, int], ...]) -> list[Span]:
    """The latest spans of each file in the directory; read again when a file grows or the cache
    entry expires."""
    return load_spans(Path(directory), tail_bytes=TAIL_BYTES)


def _signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(directory.glob("*.jsonl"))
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def _listing(listed: list[TraceSummary]) -> None:
    st.subheader("Recent cascades")
    if not listed:
        st.caption("No trace crosses three services yet: upload a batch to start a cascade.")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "trace": [row.trace_id for row in listed],
                "started": [datetime.fromtimestamp(row.started, UTC) for row in listed],
                "spans": [row.spans for row in listed],
                "services": [", ".join(sorted(row.services)) for row in listed],
                "first span": [row.root for row in listed],
            }
        ),
        hide_index=True,
    )


def _choose(listed: list[TraceSummary]) -> str:
    """The trace picked (newest first); ?trace= (a trace id or its first digits) picks one, which
    may be older than the listing or single-service."""
    asked = st.query_params.get("trace", "").strip().lower()
    options = [row.trace_id for row in listed]
    index = next((i for i, option in enumerate(options) if asked and option.startswith(asked)), None)
    if asked and index is None:
        st.caption(
            f"Trace {asked} is not among the recent ones (the page reads the last "
            f"{TAIL_BYTES >> 20} MiB of each span file)."
        )
        options, index = [asked, *options], 0
    if not options:
        return ""
    chosen = st.selectbox("Trace", options, index=index or 0, key="traces_trace")
    if chosen is not None and not (asked and chosen.startswith(asked)):
        st.query_params["trace"] = chosen
    return chosen or ""


def timeline_frame(spans: list[Span]) -> pd.DataFrame:
    """A row per span in tree order: its service, indented name, start and end offsets (s)."""
    rows = timeline(spans)
    return pd.DataFrame(
        {
            "order": range(len(rows)),
            # No-break spaces: a chart's axis labels keep them, so the indentation shows the tree.
            "span": [
                f"{number:>3}{_INDENT * row.depth} {label(row.span)}" for number, row in enumerate(rows)
            ],
            "service": [row.span.service for row in rows],
            "start (s)": [row.offset for row in rows],
            "end (s)": [row.offset + row.duration for row in rows],
            "duration (ms)": [round(row.duration * 1000, 2) for row in rows],
            "status": [row.span.status or "unset" for row in rows],
        }
    )


def _waterfall(spans: list[Span]) -> None:
    services = sorted({span.service for span in spans})
    st.subheader(f"Waterfall of {spans[0].trace_id}")
    st.caption(f"{len(spans)} spans across {len(services)} services: {', '.join(services)}")
    frame = timeline_frame(spans)
    # A span of a few microseconds would be no bar at all: each is drawn at least a sliver wide.
    sliver = max(float(frame["end (s)"].max()), 1e-3) / 400
    frame["bar end"] = frame[["end (s)"]].max(axis=1).clip(lower=frame["start (s)"] + sliver)
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("span:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(labelLimit=420)),
            x=alt.X("start (s):Q", title="seconds from the first span"),
            x2="bar end:Q",
            color=alt.Color("service:N", legend=alt.Legend(orient="top")),
            tooltip=["service:N", "span:N", "start (s):Q", "duration (ms):Q", "status:N"],
        )
        # The chart's own height (a row per span): Vega does not grow it to the container's.
        .properties(height=_ROW_PIXELS * len(frame))
    )
    st.altair_chart(chart, width="stretch", alt=f"Waterfall of trace {spans[0].trace_id}")
    st.code("\n".join(waterfall(spans)), language=None)
