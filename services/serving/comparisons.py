"""Live comparisons of a model's champion and challenger, scored off the answer path.

Shadow: for a sampled share of the requests the champion answered, the shadow version scores the
same inputs. Canary mirror: for every request the canary answered, the champion scores the same
inputs, so that the monitor compares the versions during canary steps too. Either way the answer
has already been produced: `offer` only enqueues references to the request's arrays on a bounded
queue (dropped and counted when it is full, `cascade_serving_shadow_dropped_total`), and one worker
scores them on an executor of its own, so comparisons never delay an answer nor take the inference
threads. Each pair of first outputs (a label, or a regressor's value) is batched into
PredictionsCompared events of at most MAX_ROWS_PER_EVENT rows, published when a batch is full or at
the next `flush` (the live stats' interval). A shadow that fails to score a request is counted as a
challenger failure (the event's `challenger_failures`, and the shadow's live stats); the request
it came from was answered by the champion regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from prometheus_client import Counter

from cascade.events import PredictionsCompared
from cascade.services.serving.live_stats import LiveStats
from cascade.services.serving.repository import Array, LoadedModel
from cascade.services.serving.traffic import Routed

__all__ = ["MAX_ROWS_PER_EVENT", "Comparisons"]

log = logging.getLogger(__name__)

SOURCE = "cascade/serving"
# Rows per PredictionsCompared event, as the contract bounds it.
MAX_ROWS_PER_EVENT = 500

ChallengerRole = Literal["shadow", "canary"]

DROPPED = Counter(
    "cascade_serving_shadow_dropped_total",
    "Shadow scorings (role shadow) and canary mirror scorings (role canary) dropped because their "
    "queue was full; the request itself was answered.",
    ["model", "role"],
)
SCORING_FAILURES = Counter(
    "cascade_serving_shadow_failures_total",
    "Off-path scorings that failed: the shadow (role shadow) or the champion mirroring a canary "
    "answer (role canary).",
    ["model", "role"],
)
UNPUBLISHED = Counter(
    "cascade_serving_comparisons_unpublished_total",
    "PredictionsCompared events that could not be published (their rows are lost).",
)

Publish = Callable[[PredictionsCompared], Awaitable[None]]


@dataclass(frozen=True)
class _Job:
    routed: Routed  # the answer: its version, role and route
    scorer: LoadedModel  # who scores the same inputs: the shadow, or the champion for a canary answer
    role: ChallengerRole
    request_id: str
    feeds: Mapping[str, Array]
    answer: Array  # the answering version's first output


@dataclass
class _Batch:
    request_ids: list[str] = field(default_factory=list)
    champion_outputs: list[float] = field(default_factory=list)
    challenger_outputs: list[float] = field(default_factory=list)
    challenger_failures: int = 0


# A batch per (model, champion version, challenger version, role).
_BatchKey = tuple[str, int, int, ChallengerRole]


class Comparisons:
    """`offer` from the request path (never blocks); `start`/`stop` the worker; `flush` publishes
    the batches so far (called every live-stats interval)."""

    def __init__(
        self,
        publish: Publish,
        stats: LiveStats,
        instance: str,
        queue_size: int = 1000,
        max_rows: int = 100,
        nice_increment: int = 10,
    ) -> None:
        self._publish = publish
        self.nice_increment = nice_increment
        self.stats = stats
        self.instance = instance
        self.max_rows = max_rows
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self._batches: dict[_BatchKey, _Batch] = {}
        # One thread: comparisons take at most one core from inference, whatever the load.
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._broken: set[tuple[str, int]] = set()  # scorers whose failure was logged

    def offer(self, routed: Routed, request_id: str, feeds: Mapping[str, Array], answer: Array) -> None:
        """Queue the comparison this answered request calls for, if any: the shadow's scoring of a
        champion answer (sampled), or the champion's of a canary answer. Never blocks."""
        route = routed.route
        if route is None or routed.explicit:
            return
        scorer: LoadedModel | None
        role: ChallengerRole
        if routed.role == "canary":
            scorer, role = route.champion, "canary"
        elif route.samples_shadow():
            scorer, role = route.shadow, "shadow"
        else:
            return
        if scorer is None:
            return
        rows = _rows(answer)
        if rows == 0:
            return
        if rows > self.max_rows:  # a sample of a large batch: its first rows (views, no copies)
            feeds = {name: array[: self.max_rows] for name, array in feeds.items()}
            answer = answer[: self.max_rows]
        try:
            self._queue.put_nowait(_Job(routed, scorer, role, request_id or str(uuid.uuid4()), feeds, answer))
        except asyncio.QueueFull:
            DROPPED.labels(routed.model.name, role).inc()
            self.stats.dropped(routed.model.name, route.revision)

    def start(self) -> None:
        if self._task is None:
            self._executor = ThreadPoolExecutor(
                1,
                thread_name_prefix="comparisons",
                initializer=_lower_thread_priority,
                initargs=(self.nice_increment,),
            )
            self._task = asyncio.create_task(self._work_forever(), name="comparisons")

    async def stop(self) -> None:
        """Stop scoring. What is queued or batched is lost (the broker has stopped by then): the
        comparisons are a sample."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def flush(self) -> None:
        batches, self._batches = self._batches, {}
        for key, batch in batches.items():
            await self._publish_batch(key, batch)

    async def drain(self) -> None:
        """Wait until every queued comparison has been scored (for tests and orderly stops)."""
        await self._queue.join()

    async def _work_forever(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._score(job)
            except Exception:  # one odd request must not stop the comparisons of the others
                log.exception("comparing %s's versions failed", job.routed.model.name)
            finally:
                self._queue.task_done()

    async def _score(self, job: _Job) -> None:
        route = job.routed.route
        assert route is not None  # offer() queues routed answers only
        name = job.routed.model.name
        started = time.perf_counter()
        timing: list[float] = []
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._executor, _timed, job.scorer.predict, dict(job.feeds), timing
            )
            scored = _first_per_row(results[0], _rows(job.answer))
            if scored is None:
                raise ValueError(
                    f"its first output has shape {list(results[0].shape)}, not one value per row"
                )
        except Exception as exc:
            scored = None
            SCORING_FAILURES.labels(name, job.role).inc()
            if (name, job.scorer.version) not in self._broken:
                self._broken.add((name, job.scorer.version))
                log.warning(
                    "model %s version %d failed to score live requests: %s", name, job.scorer.version, exc
                )
        seconds = timing[0] if timing else time.perf_counter() - started
        if job.role == "shadow":
            self.stats.observe(name, route.revision, job.scorer.version, "shadow", seconds, scored is None)
        champion, challenger = (
            (job.scorer, job.routed.model) if job.role == "canary" else (job.routed.model, job.scorer)
        )
        key: _BatchKey = (name, champion.version, challenger.version, job.role)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch()
        if scored is None:
            # A shadow's failure is the challenger's; a champion failing to mirror a canary answer
            # is no evidence about the canary, so that comparison is only lost.
            if job.role == "shadow":
                batch.challenger_failures += 1
            return
        answered = _first_per_row(job.answer, len(scored))
        if answered is None:
            return
        champion_outputs, challenger_outputs = (
            (scored, answered) if job.role == "canary" else (answered, scored)
        )
        finite = np.isfinite(champion_outputs) & np.isfinite(challenger_outputs)
        batch.request_ids.extend([job.request_id] * int(finite.sum()))
        batch.champion_outputs.extend(champion_outputs[finite].tolist())
        batch.challenger_outputs.extend(challenger_outputs[finite].tolist())
        if len(batch.request_ids) >= MAX_ROWS_PER_EVENT:  # a full event goes now; the rest waits
            full = _Batch(
                batch.request_ids[:MAX_ROWS_PER_EVENT],
                batch.champion_outputs[:MAX_ROWS_PER_EVENT],
                batch.challenger_outputs[:MAX_ROWS_PER_EVENT],
                batch.challenger_failures,
            )
            self._batches[key] = _Batch(
                batch.request_ids[MAX_ROWS_PER_EVENT:],
                batch.champion_outputs[MAX_ROWS_PER_EVENT:],
                batch.challenger_outputs[MAX_ROWS_PER_EVENT:],
            )
            await self._publish_batch(key, full)

    async def _publish_batch(self, key: _BatchKey, batch: _Batch) -> None:
        model, champion, challenger, role = key
        for start in range(0, max(len(batch.request_ids), 1), MAX_ROWS_PER_EVENT):
            stop = start + MAX_ROWS_PER_EVENT
            rows = batch.request_ids[start:stop]
            failures = batch.challenger_failures if start == 0 else 0
            if not rows and not failures:
                return
            event = PredictionsCompared(
                source=SOURCE,
                subject=model,
                model=model,
                instance=self.instance,
                champion_version=champion,
                challenger_version=challenger,
                challenger_role=role,
                request_ids=rows,
                champion_outputs=batch.champion_outputs[start:stop],
                challenger_outputs=batch.challenger_outputs[start:stop],
                challenger_failures=failures,
            )
            try:
                await self._publish(event)
            except Exception as exc:
                UNPUBLISHED.inc()
                if not self._failing:
                    log.warning(
                        "live comparisons cannot be published (%r); dropping them until they can", exc
                    )
                self._failing = True
            else:
                self._failing = False


def _lower_thread_priority(increment: int) -> None:
    """Lower the calling thread's CPU priority by `increment`. On Linux a nice value belongs to a
    thread, so when the cores are saturated the kernel runs the answering threads and the event loop
    first, the comparisons' queue fills and further scorings are dropped and counted: the shadow
    pays for a saturated server, not the champion's latency. Elsewhere it is a no-op."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        thread = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + increment))
    except OSError as exc:  # e.g. a sandbox that forbids it: comparisons still run, at full priority
        log.warning("cannot lower the comparisons thread's priority: %s", exc)


def _rows(array: Array) -> int:
    return int(array.shape[0]) if array.ndim else 1


def _first_per_row(array: Any, rows: int) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    """Each row's first value (a label, a regressor's value, a class's score) as floats; None when
    the output does not have `rows` rows."""
    values = np.asarray(array)
    if values.ndim == 0 or values.shape[0] != rows or values.size == 0:
        return None
    try:
        return values.reshape(rows, -1)[:, 0].astype(np.float64)
    except (TypeError, ValueError):  # strings, say: nothing to compare as numbers
        return None


def _timed(
    predict: Callable[[Mapping[str, Array]], list[Array]], feeds: Mapping[str, Array], timing: list[float]
) -> list[Array]:
    """`predict(feeds)` in the worker thread, its own seconds appended to `timing`: what the shadow
    costs, measured as the champion's answer is. The wall time around the executor also holds the
    wait for a busy event loop to resume the scoring coroutine: under load on the real stack a good
    shadow's p99 came out at 25.6 ms against its champion's 4.8 ms, and was rolled back for it."""
    started = time.perf_counter()
    try:
        return predict(feeds)
    finally:
        timing.append(time.perf_counter() - started)
