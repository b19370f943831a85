"""One logging set-up for every service: JSON lines off a terminal, text on one, trace ids on both;
repeats of one message kind rate-limited; a log file that rotates.

Like CASCADE_EVENT_LOOP, these are properties of the process, read once at start-up:

    CASCADE_LOG_FILE              log to this file, rotated by size, instead of stderr
    CASCADE_LOG_FILE_MAX_BYTES    rotate past this size (default 20 MiB)
    CASCADE_LOG_FILE_BACKUPS      rotated files kept (default 5): at most 6 x 20 MiB per service
    CASCADE_LOG_RATE_LIMIT        records let through per message kind per 10 s (default 10, 0: all)
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from opentelemetry import trace

__all__ = ["RateLimitFilter", "setup_logging"]

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_BACKUPS = 5
DEFAULT_RATE_LIMIT = 10
RATE_INTERVAL_SECONDS = 10.0


def _trace_ids() -> tuple[str, str]:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "", ""
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = _trace_ids()
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": trace_id,
            "span_id": span_id,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + service + " %(name)s: %(message)s%(trace)s")

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = _trace_ids()
        record.trace = f" [trace_id={trace_id} span_id={span_id}]" if trace_id else ""
        return super().format(record)


@dataclass
class _Window:
    started: float
    let_through: int = 0
    suppressed: int = 0
    level: int = logging.INFO


class RateLimitFilter(logging.Filter):
    """Lets through at most `per_interval` records of one kind (logger and message template, before
    its arguments are filled in) per `interval` seconds; the rest are counted, and once the interval
    is over one line says how many were suppressed. During an outage every retry logs the same
    few kinds of error; this keeps their first lines and the counts, not thousands of copies.

    `report` receives the summary records; setup_logging gives it the handler this filter guards."""

    SUMMARY = "suppressed %d similar messages in the last %.0f s: %r"

    def __init__(
        self,
        report: Callable[[logging.LogRecord], object],
        per_interval: int = DEFAULT_RATE_LIMIT,
        interval: float = RATE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.report = report
        self.per_interval = per_interval
        self.interval = interval
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()  # records arrive from worker threads too
        self._next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg is self.SUMMARY or self.per_interval <= 0:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            finished = self._sweep(now)
            window = self._windows.setdefault(key, _Window(now))
            window.level = max(window.level, record.levelno)
            allowed = window.let_through < self.per_interval
            if allowed:
                window.let_through += 1
            else:
                window.suppressed += 1
        for summary in finished:
            self.report(summary)
        return allowed

    def _sweep(self, now: float) -> list[logging.LogRecord]:
        """Close the windows whose interval is over (at most once a second): a summary for each
        that suppressed anything. Holding the lock; the caller reports them after releasing it."""
        if now < self._next_sweep:
            return []
        self._next_sweep = now + min(1.0, self.interval)
        summaries = []
        for key, window in list(self._windows.items()):
            if now - window.started < self.interval:
                continue
            del self._windows[key]
            if window.suppressed:
                name, template = key
                summary = logging.LogRecord(
                    name,
                    window.level,
                    __file__,
                    0,
                    self.SUMMARY,
                    (window.suppressed, now - window.started, template),
                    None,
                )
                summaries.append(summary)
        return summaries


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None


def setup_logging(
    service: str, level: str = "INFO", fmt: str = "auto", file: Path | None = None
) -> logging.Handler:
    """Send the root logger's records, rate-limited, to `file` (else CASCADE_LOG_FILE), rotated by
    size; without either, to stderr. Returns the handler."""
    path = file or (Path(os.environ["CASCADE_LOG_FILE"]) if os.environ.get("CASCADE_LOG_FILE") else None)
    handler: logging.Handler
    if path is None:
        handler = logging.StreamHandler(sys.stderr)
        use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path,
            maxBytes=_env_int("CASCADE_LOG_FILE_MAX_BYTES", DEFAULT_MAX_BYTES),
            backupCount=_env_int("CASCADE_LOG_FILE_BACKUPS", DEFAULT_BACKUPS),
            encoding="utf-8",
        )
        use_json = fmt != "text"
    handler.setFormatter(_JsonFormatter(service) if use_json else _TextFormatter(service))
    handler.addFilter(RateLimitFilter(handler.handle, _env_int("CASCADE_LOG_RATE_LIMIT", DEFAULT_RATE_LIMIT)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka narrates every rebalance at INFO; keep its warnings only.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    return handler
