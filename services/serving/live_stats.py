"""What this replica sees of each model's live traffic while it has a canary or a shadow, reported to
the monitor as LiveTrafficReported every interval: per version and role, requests, failures and a
latency histogram over the fixed LATENCY_BOUNDS_MS (so that replicas' counts add up).

Counting is on the event loop only (no locks), a dictionary lookup and a bisection per request, and
only for requests routed by a route with a challenger: a model with a champion alone costs nothing.
Counts are kept per traffic revision, so an interval in which the split changed reports each split's
requests under its own revision.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import Counter

from cascade.errors import InvalidArgument, NotFound
from cascade.events import LATENCY_BOUNDS_MS, LiveTrafficReported, VersionLiveStats
from cascade.services.serving.repository import ModelRejectedInput

__all__ = ["LiveRole", "LiveStats", "LiveStatsReporter", "fails_the_version"]

log = logging.getLogger(__name__)

SOURCE = "cascade/serving"

LiveRole = Literal["champion", "canary", "shadow"]

UNPUBLISHED = Counter(
    "cascade_serving_live_stats_unpublished_total",
    "LiveTrafficReported events that could not be published (their interval's counts are lost).",
)

# LiveTrafficReported.versions holds at most this many entries (a champion, a canary and a shadow,
# with room for a version that left mid-interval).
_MAX_VERSIONS = 8


@dataclass
class _Counts:
    requests: int = 0
    failures: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))


class LiveStats:
    """Counts since the last `drain`, per (model, traffic revision, version, role)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int, int, LiveRole], _Counts] = {}
        self._dropped: dict[tuple[str, int], int] = {}

    def observe(
        self, model: str, revision: int, version: int, role: LiveRole, seconds: float, failed: bool
    ) -> None:
        """One request answered (champion, canary) or scored (shadow) in `seconds`."""
        key = (model, revision, version, role)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = _Counts()
        counts.requests += 1
        if failed:
            counts.failures += 1
        counts.buckets[bisect.bisect_left(LATENCY_BOUNDS_MS, seconds * 1000.0)] += 1

    def dropped(self, model: str, revision: int) -> None:
        """One shadow (or mirror) scoring dropped because its queue was full."""
        key = (model, revision)
        self._dropped[key] = self._dropped.get(key, 0) + 1

    def drain(self, instance: str, interval_seconds: float) -> list[LiveTrafficReported]:
        """The counts since the last drain as events (one per model and revision), and start anew."""
        counts, self._counts = self._counts, {}
        dropped, self._dropped = self._dropped, {}
        grouped: dict[tuple[str, int], list[VersionLiveStats]] = {key: [] for key in dropped}
        for (model, revision, version, role), tally in sorted(counts.items()):
            grouped.setdefault((model, revision), []).append(
                VersionLiveStats(
                    version=version,
                    role=role,
                    requests=tally.requests,
                    failures=tally.failures,
                    latency_buckets=tally.buckets,
                )
            )
        return [
            LiveTrafficReported(
                source=SOURCE,
                subject=model,
                model=model,
                instance=instance,
                traffic_revision=revision,
                interval_seconds=interval_seconds,
                versions=versions[:_MAX_VERSIONS],
                shadow_dropped=dropped.get((model, revision), 0),
            )
            for (model, revision), versions in sorted(grouped.items())
        ]


def fails_the_version(error: BaseException) -> bool:
    """Whether a failed request counts as its version's failure. A malformed request (refused
    before the model ran: a bad shape, an unknown output) or one its caller cancelled says nothing
    about the version, and would fail on any version alike; the model refusing the input does."""
    if isinstance(error, asyncio.CancelledError):
        return False
    if isinstance(error, InvalidArgument | NotFound):
        return isinstance(error, ModelRejectedInput)
    return True


Publish = Callable[[LiveTrafficReported], Awaitable[None]]
Tick = Callable[[], Awaitable[None]]


class LiveStatsReporter:
    """Every `interval_seconds`, publishes what `stats` counted, then runs `after_each` (the
    comparisons' flush). A failed publish is logged and counted, never retried: the next interval
    reports afresh."""

    def __init__(
        self,
        stats: LiveStats,
        publish: Publish,
        instance: str,
        interval_seconds: float = 2.0,
        after_each: Tick | None = None,
    ) -> None:
        self.stats = stats
        self._publish = publish
        self.instance = instance
        self.interval_seconds = interval_seconds
        self._after_each = after_each
        self._task: asyncio.Task[None] | None = None
        self._last = time.monotonic()
        self._failing = False

    def start(self) -> None:
        if self._task is None:
            self._last = time.monotonic()
            self._task = asyncio.create_task(self._report_forever(), name="live-stats")

    async def stop(self) -> None:
        """Stop reporting. What was counted since the last report is lost (the broker has stopped
        by then): the monitor judges on many intervals."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def report(self) -> None:
        now = time.monotonic()
        events = self.stats.drain(self.instance, max(now - self._last, 0.0))
        self._last = now
        for event in events:
            try:
                await self._publish(event)
            except Exception as exc:
                UNPUBLISHED.inc()
                if not self._failing:
                    log.warning(
                        "live traffic stats cannot be published (%r); dropping them until they can", exc
                    )
                self._failing = True
            else:
                self._failing = False
        if self._after_each is not None:
            try:
                await self._after_each()
            except Exception:
                log.exception("flushing the live comparisons failed")

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            await self.report()
