"""Group commit: many callers' writes in one store transaction. What callers submit while a flush is
in flight waits and goes into the next flush, together; each caller awaits its own result, so an
event is acknowledged only once its rows are committed, and a failed flush fails every caller in it
(none acknowledged: each is redelivered). One caller at a time costs what it did before, one
transaction each; N callers at once share one commit (and its fsync) instead of queueing for N."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Submitted items flushed in groups of at most `max_items`, one flush at a time, in order of
    submission. `flush` gets the items and returns one result per item, in their order."""

    def __init__(
        self, flush: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]], max_items: int = 512
    ) -> None:
        self._flush = flush
        self._max_items = max_items
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.flushes = 0  # transactions run, for tests and benchmarks

    async def submit(self, item: Item) -> Result:
        """`item`'s result once the flush that took it has committed; its error if that flush failed."""
        (result,) = await self.submit_many([item])
        return result

    async def submit_many(self, items: Sequence[Item]) -> list[Result]:
        """The results of `items`, submitted together (so in one flush when they fit in one), once
        committed; the first error of a flush that took any of them."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = [loop.create_future() for _ in items]
        self._waiting.extend(zip(items, futures, strict=True))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())
        # A caller that gives up does not stop the flush: its rows may still commit (then its
        # event is redelivered and appended again, which at-least-once delivery allows).
        return list(await asyncio.shield(asyncio.gather(*futures)))

    async def _flush_all(self) -> None:
        while self._waiting:
            group = self._waiting[: self._max_items]
            del self._waiting[: len(group)]
            self.flushes += 1
            try:
                results = await self._flush([item for item, _ in group])
                if len(results) != len(group):
                    raise RuntimeError(f"a flush of {len(group)} items returned {len(results)} results")
            except Exception as exc:  # every caller of the group gets it: none is acknowledged
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:  # cancelled (the service stops): nobody is acknowledged
                for _, future in [*group, *self._waiting]:
                    future.cancel()
                self._waiting.clear()
                raise
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)
