"""The relay of a transactional outbox: events stored with the change they announce, published after.

A service writes each event into its own database in the same transaction as the change (so a
change is never without its event, nor an event without its change), then asks the relay to
publish. The relay publishes the oldest unpublished events in bounded batches and marks them
published; if Kafka is down the change stands, the caller is answered, and the relay keeps trying
in the background. Delivery is at least once: a crash between publishing and marking publishes again,
and consumers recognise an event by its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from cascade.events import Event, decode_event

__all__ = ["OutboxRelay", "OutboxStore", "PendingEvent"]

log = logging.getLogger(__name__)

# (outbox row id, event type, event JSON)
PendingEvent = tuple[int, str, str]


class OutboxStore(Protocol):
    """Where a service keeps its outbox. Both methods block (database I/O): the relay calls them
    in a worker thread."""

    def pending_events(self, limit: int | None = None) -> list[PendingEvent]:
        """The oldest `limit` unpublished events, oldest first."""
        ...

    def mark_published(self, event_ids: Sequence[int]) -> None: ...


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStore,
        publish: Callable[[Event], Awaitable[None]],
        batch_size: int = 100,
        interval: float = 1.0,
    ) -> None:
        self.store = store
        self.publish = publish
        self.batch_size = batch_size
        self.interval = interval
        self._flushing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._flush_task: asyncio.Task[None] | None = None

    async def flush(self) -> None:
        """Publish what the outbox holds, oldest first; a failure leaves the rest for next time."""
        async with self._flushing:
            while batch := await asyncio.to_thread(self.store.pending_events, self.batch_size):
                published: list[int] = []
                try:
                    for event_id, event_type, event_json in batch:
                        await self.publish(decode_event(event_type, event_json))
                        published.append(event_id)
                finally:  # one transaction per batch; a crash before it republishes (at least once)
                    if published:
                        await asyncio.to_thread(self.store.mark_published, published)
                if len(batch) < self.batch_size:
                    break

    async def announce(self, wait: float) -> bool:
        """Publish what is pending, waiting at most `wait` seconds; True if the outbox was drained.

        A committed change is answered either way: if Kafka does not take its event in time (an
        outage hangs a producer until its own timeout), the flush goes on in the background and the
        relay's loop retries after it. The flush is shielded, so giving up waiting never cancels a
        send half-way, and concurrent callers share it."""
        try:
            async with asyncio.timeout(wait):
                while True:
                    if self._flush_task is None or self._flush_task.done():
                        self._flush_task = asyncio.create_task(self.flush())
                        self._flush_task.add_done_callback(self._after_flush)
                    await asyncio.shield(self._flush_task)
                    # A flush already under way may have read the outbox before the caller's event
                    # was in it: then one more.
                    if not await asyncio.to_thread(self.store.pending_events, 1):
                        return True
        except TimeoutError:
            return False
        except Exception as exc:  # Kafka refused: the events wait in the outbox
            log.warning("events wait in the outbox until Kafka takes them: %s", exc)
            return False

    def _after_flush(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._wake.set()  # let the loop retry after its interval rather than wait for a caller

    async def run(self) -> None:
        """Forever: publish what a crash or an outage left in the outbox, every `interval` seconds."""
        while True:
            try:
                await self.flush()
            except Exception as exc:  # Kafka down: the events wait in the outbox
                log.warning("outbox: publishing failed, will retry: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
