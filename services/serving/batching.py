"""Adaptive batching: concurrent requests for one model version share one `session.run`.

As Triton's dynamic batcher, on serving's event loop and without a thread of its own. A request
opens a batch for its version (or joins the open one), and the batch runs when one of these comes
first:

- it holds `max_batch_rows` rows (a request that would overflow it runs it first, then opens the
  next one);
- while requests come further apart than `max_delay_seconds` (on average, and always for the first
  one): a turn of the event loop in which no request joined it. A lone caller pays two loop turns,
  a few microseconds, never the delay;
- while they come closer together: the first request to join `max_delay_seconds` or more after the
  batch opened, or a timer. The timer cannot be shorter than a millisecond (asyncio waits at least
  that long for any timer, uvloop rounds to whole milliseconds), so when requests stop coming a
  batch may wait up to 1 ms even with a shorter delay; the loop sleeps meanwhile, never spinning.
  A wait that caught no second request (a lone caller whose round trip is shorter than the delay
  looks like frequent requests) stops the waiting for the next 16 batches.

A batch concatenates its requests' inputs along the first (batch) dimension, runs once (on the loop
up to `inline_max_rows` rows, in a worker thread beyond, as serving runs a single request) and
gives each caller the slice of every output that belongs to its rows, in its rows' order. Requests
batch together only when every input has the same dtype and the same shape after the first
dimension, and every input of the model has a free first dimension. Anything else runs alone, as
does a request of at least `max_batch_rows` rows.

If a batch's run fails, or its outputs cannot be split by rows, each of its requests runs again
alone: only the requests that caused the failure fail, with their own error.

Statistics follow Triton's: each request still counts once (success or failure, its rows as
inferences), while an execution counts once per `session.run` (`Prediction.executions` is 1 for the
first request of a batch and 0 for the others). A request's compute_infer time includes its wait in
the batch, as Triton's would include it in queue time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Histogram

from cascade.services.serving.repository import Array, LoadedModel

__all__ = ["BATCHING_OFF", "Batcher", "BatchingPolicy", "Prediction"]

log = logging.getLogger(__name__)

BATCH_REQUESTS = Histogram(
    "cascade_serving_batch_requests",
    "Requests answered by one batched session.run (adaptive batching on).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_RERUNS = Counter(
    "cascade_serving_batch_reruns_total",
    "Batches whose requests ran again one by one after the batch failed, by model.",
    ["model"],
)


@dataclass(frozen=True)
class BatchingPolicy:
    enabled: bool = True
    max_delay_seconds: float = 0.0005  # longest a batch stays open after its first request
    max_batch_rows: int = 256  # rows of one batched run; requests this large run alone


BATCHING_OFF = BatchingPolicy(enabled=False)

# The shortest timer worth setting: asyncio waits at least a millisecond for any timer, and uvloop
# rounds to whole milliseconds (a 0.4 ms timer fires at once).
_TIMER_FLOOR = 0.001
_GAP_WEIGHT = 0.2  # of the newest gap between requests in their running average
_NO_WAIT_AFTER_FUTILE = 16  # batches that do not wait after a wait that caught nothing


@dataclass(frozen=True)
class Prediction:
    """One request's outputs (every output of the model, in its order, this request's rows only)."""

    outputs: list[Array]
    executions: int  # session runs to count for this request: 0 when another request of its batch counts it


# The batch a request may join: its model (by identity: a reloaded version is another session) and,
# per input, name, dtype and shape after the batch dimension.
_BatchKey = tuple[int, tuple[tuple[str, str, tuple[int, ...]], ...]]


class _Caller:
    __slots__ = ("feeds", "future", "rows")

    def __init__(self, feeds: Mapping[str, Array], rows: int, future: asyncio.Future[Prediction]) -> None:
        self.feeds = feeds
        self.rows = rows
        self.future = future


class _Batch:
    __slots__ = ("callers", "closed", "joined", "key", "model", "opened", "rows", "timer")

    def __init__(self, model: LoadedModel, key: _BatchKey, opened: float) -> None:
        self.model = model
        self.key = key
        self.callers: list[_Caller] = []
        self.rows = 0
        self.opened = opened
        self.joined = False  # whether a request joined since the last turn of the loop
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None  # set while it waits for the max delay


class Batcher:
    """Runs the model for requests, batching concurrent ones when the policy enables it. Use it from
    one event loop only (the service's)."""

    def __init__(
        self,
        policy: BatchingPolicy = BATCHING_OFF,
        inline_max_rows: int = 256,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.policy = policy
        self._clock = clock  # seconds; tests give their own to decide when the delay has passed
        self.inline_max_rows = inline_max_rows  # runs of at most this many rows stay on the event loop
        self._open: dict[_BatchKey, _Batch] = {}
        # Seconds between batchable requests, on average (exponentially weighted): whether another
        # one is likely to come within the max delay. Unknown (inf) until two have come.
        self._gap = math.inf
        self._last_arrival = -math.inf
        # Batches still to open without waiting after a wait that caught no second request (a lone
        # closed-loop caller whose round trip is shorter than the delay looks like frequent requests).
        self._no_wait = 0
        self.waits = 0  # batches that waited for the delay
        self.futile_waits = 0  # of which those that got no second request
        self._running: set[asyncio.Task[None]] = set()  # threaded batches, referenced until done

    async def predict(self, model: LoadedModel, feeds: Mapping[str, Array], rows: int) -> Prediction:
        """The model's outputs for `feeds` (`rows` rows), alone or as part of a batch."""
        policy = self.policy
        if not policy.enabled or rows >= policy.max_batch_rows:
            return Prediction(await self._run(model, feeds, rows), 1)
        key = _batch_key(model, feeds, rows)
        if key is None:
            return Prediction(await self._run(model, feeds, rows), 1)
        loop = asyncio.get_running_loop()
        now = self._clock()
        self._note_arrival(now)
        batch = self._open.get(key)
        if batch is not None and batch.rows + rows > policy.max_batch_rows:
            self._close(batch)
            batch = None
        if batch is None:
            batch = self._open[key] = _Batch(model, key, now)
            if self._no_wait == 0 and self._gap < policy.max_delay_seconds:
                # More are likely within the delay: wait for them.
                self.waits += 1
                batch.timer = loop.call_later(
                    max(policy.max_delay_seconds, _TIMER_FLOOR), self._expire, batch
                )
            else:
                self._no_wait = max(self._no_wait - 1, 0)
                loop.call_soon(self._turn, batch)
        future: asyncio.Future[Prediction] = loop.create_future()
        batch.callers.append(_Caller(feeds, rows, future))
        batch.rows += rows
        batch.joined = True
        if batch.rows >= policy.max_batch_rows or (
            batch.timer is not None and now - batch.opened >= policy.max_delay_seconds
        ):
            self._close(batch)
        return await future

    # -- internals -------------------------------------------------------------------------------
    async def _run(self, model: LoadedModel, feeds: Mapping[str, Array], rows: int) -> list[Array]:
        if rows <= self.inline_max_rows:
            return model.predict(feeds)
        return await asyncio.to_thread(model.predict, feeds)

    def _note_arrival(self, now: float) -> None:
        gap, self._last_arrival = now - self._last_arrival, now
        self._gap = gap if self._gap == math.inf else self._gap + _GAP_WEIGHT * (gap - self._gap)

    def _expire(self, batch: _Batch) -> None:
        if batch.closed:
            return
        if len(batch.callers) == 1:
            self.futile_waits += 1
            self._no_wait = _NO_WAIT_AFTER_FUTILE
        self._close(batch)

    def _turn(self, batch: _Batch) -> None:
        """Once per loop turn while `batch` is open: keep it open only while requests keep joining."""
        if batch.closed:
            return
        if batch.joined and self._clock() - batch.opened < self.policy.max_delay_seconds:
            batch.joined = False
            asyncio.get_running_loop().call_soon(self._turn, batch)
            return
        self._close(batch)

    def _close(self, batch: _Batch) -> None:
        """Take `batch` out of the open ones and run it: on the loop if small enough, else in a thread."""
        batch.closed = True
        if batch.timer is not None:
            batch.timer.cancel()
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        BATCH_REQUESTS.observe(len(batch.callers))
        if batch.rows <= self.inline_max_rows:
            if not _answer(batch, _attempt(batch.model, _concatenate(batch))):
                _rerun_inline(batch)
            return
        task = asyncio.get_running_loop().create_task(self._run_threaded(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_threaded(self, batch: _Batch) -> None:
        try:
            if not _answer(batch, await asyncio.to_thread(_attempt, batch.model, _concatenate(batch))):
                BATCH_RERUNS.labels(batch.model.name).inc()
                for caller in batch.callers:
                    _settle(caller, await self._alone(batch.model, caller))
        except BaseException as exc:  # cancelled at shutdown, say: no caller is left waiting
            for caller in batch.callers:
                if not caller.future.done():
                    caller.future.set_exception(exc)
            raise

    async def _alone(self, model: LoadedModel, caller: _Caller) -> list[Array] | Exception:
        try:
            return await self._run(model, caller.feeds, caller.rows)
        except Exception as exc:
            return exc


def _batch_key(model: LoadedModel, feeds: Mapping[str, Array], rows: int) -> _BatchKey | None:
    """What a batch must share with this request, or None if the request cannot be batched: an input
    without `rows` as its first dimension, or a model input whose first dimension is fixed."""
    parts = []
    for spec in model.inputs:
        array = feeds[spec.name]
        if not spec.shape or spec.shape[0] != -1 or array.ndim == 0 or array.shape[0] != rows:
            return None
        parts.append((spec.name, array.dtype.str, array.shape[1:]))
    return id(model), tuple(parts)


def _concatenate(batch: _Batch) -> dict[str, Array]:
    callers = batch.callers
    if len(callers) == 1:
        return dict(callers[0].feeds)
    return {spec.name: np.concatenate([c.feeds[spec.name] for c in callers]) for spec in batch.model.inputs}


def _attempt(model: LoadedModel, feeds: Mapping[str, Array]) -> list[Array] | Exception:
    """The batch's outputs, or why they could not be had (not raised: the callers get it)."""
    try:
        return model.predict(feeds)
    except Exception as exc:
        return exc


def _answer(batch: _Batch, outcome: list[Array] | Exception) -> bool:
    """Give each caller its rows of the outputs; False, answering none, if the batch holds several
    requests and failed or gave outputs that cannot be split by rows (they must run alone). A batch
    of one gets its own outcome as it is."""
    callers = batch.callers
    if len(callers) == 1:
        _settle(callers[0], outcome)
        return True
    if isinstance(outcome, Exception) or any(
        output.ndim == 0 or output.shape[0] != batch.rows for output in outcome
    ):
        return False
    start = 0
    for index, caller in enumerate(callers):
        end = start + caller.rows
        if not caller.future.done():  # a caller cancelled meanwhile (its deadline) needs no answer
            caller.future.set_result(Prediction([output[start:end] for output in outcome], int(index == 0)))
        start = end
    return True


def _rerun_inline(batch: _Batch) -> None:
    BATCH_RERUNS.labels(batch.model.name).inc()
    log.debug(
        "a batch of %d requests for %s failed; running them one by one", len(batch.callers), batch.model.name
    )
    for caller in batch.callers:
        _settle(caller, _attempt(batch.model, caller.feeds))


def _settle(caller: _Caller, outcome: list[Array] | Exception) -> None:
    if caller.future.done():
        return
    if isinstance(outcome, Exception):
        caller.future.set_exception(outcome)
    else:
        caller.future.set_result(Prediction(outcome, 1))
