"""The relay of a transactional outbox: events stored with the change they announce, published after.

A service writes each event into its own database in the same transaction as the change (so a
change is never without its event, nor an event without its change), then asks the relay to
publish. The relay publishes the oldest unpublished events in bounded batches and marks them
published; if Kafka is down the change stands, the caller is answered, and the relay keeps trying
in the background. Delivery is at least once: a crash between publishing and marking publishes again,
and consumers recognise an event by its id.

Replicas sharing one database share one outbox: each relay publishes only while it holds the
outbox's lease (`cascade.database.Lease`), so one relay publishes at a time and events leave in the
order they were stored. A holder that dies or hangs lets the lease lapse after a few seconds and
another replica's relay takes over and publishes what is left; across such a hand-over an event may
go out twice (the old holder published it but had not marked it yet), which at least once allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from cascade.database import Lease
from cascade.events import Event, decode_event

__all__ = ["OutboxRelay", "OutboxStore", "PendingEvent"]

log = logging.getLogger(__name__)

# How long a stopping relay tries to let its lease go before leaving it to expire.
RELEASE_WAIT_SECONDS = 2.0
# (outbox row id, event type, event JSON)
PendingEvent = tuple[int, str, str]


class OutboxStore(Protocol):
    """Where a service keeps its outbox. The methods block (database I/O): the relay calls them in
    a worker thread."""

    def pending_events(self, limit: int | None = None) -> list[PendingEvent]:
        """The oldest `limit` unpublished events, oldest first."""
        ...

    def mark_published(self, event_ids: Sequence[int]) -> None: ...

    def newest_event_id(self) -> int:
        """The id of the newest event in the outbox, published or not; 0 when it is empty."""
        ...


class OutboxRelay:
    """Publishes a service's outbox. With a `lease` (replicas sharing the database), only while it
    holds it; without one, it assumes it is the only relay of that outbox.

    The holder looks at the outbox every `poll` seconds, so an event another replica committed
    leaves within about that; a relay without the lease tries to take it every `interval` seconds,
    so a dead holder's events are published within the lease's term and an interval."""

    def __init__(
        self,
        store: OutboxStore,
        publish: Callable[[Event], Awaitable[None]],
        batch_size: int = 100,
        interval: float = 1.0,
        lease: Lease | None = None,
        poll: float = 0.1,
    ) -> None:
        self.store = store
        self.publish = publish
        self.batch_size = batch_size
        self.interval = interval
        self.lease = lease
        self.poll = poll
        self._flushing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._flush_task: asyncio.Task[bool] | None = None

    async def _hold(self, take: bool) -> bool:
        """Whether this relay may publish: it took (or renewed) the lease, or kept it without a
        break (`take` False: the rows read under it are still its to publish). The database is
        asked only when the lease is due for renewal."""
        if self.lease is None or self.lease.fresh():
            return True
        return await asyncio.to_thread(self.lease.acquire if take else self.lease.renew)

    async def flush(self) -> bool:
        """Publish what the outbox holds, oldest first; a failure leaves the rest for next time.
        False if another replica's relay holds the lease (that one publishes), True otherwise. A
        failed publish lets the lease go: the other replicas may reach Kafka when this one cannot.

        The lease is renewed before each event (a database round trip a third of a term at most),
        and the flush stops if it lapsed: a publish that hangs past the lease's term may go out
        from the replica that takes over too."""
        async with self._flushing:
            if not await self._hold(take=True):
                return False
            try:
                await self._publish_pending()
            except Exception:
                # This replica may be the only one that cannot reach Kafka: let another try.
                await self.release()
                raise
            return True

    async def _publish_pending(self) -> None:
        while batch := await asyncio.to_thread(self.store.pending_events, self.batch_size):
            published: list[int] = []
            held = True
            try:
                for event_id, event_type, event_json in batch:
                    held = await self._hold(take=False)
                    if not held:
                        log.info("outbox: the lease lapsed; the replica that takes it publishes the rest")
                        break
                    await self.publish(decode_event(event_type, event_json))
                    published.append(event_id)
            finally:  # one transaction per batch; a crash before it republishes (at least once)
                if published:
                    await asyncio.to_thread(self.store.mark_published, published)
            if not held or len(batch) < self.batch_size:
                break

    async def announce(self, wait: float) -> bool:
        """Publish what is pending, waiting at most `wait` seconds; True once every event the outbox
        held when it was called is published (later events need not be).

        A committed change is answered either way: if Kafka does not take its event in time (an
        outage hangs a producer until its own timeout), the flush goes on in the background and the
        relay's loop retries after it. The flush is shielded, so giving up waiting never cancels a
        send half-way, and concurrent callers share it.

        When another replica's relay holds the lease, the events are its to publish: this one
        watches the outbox every `poll` seconds until they are published (that relay looks at the
        outbox as often while it holds the lease), or the wait ends, or the holder dies and this
        relay takes the lease over and publishes them itself."""
        try:
            async with asyncio.timeout(wait):
                newest = await asyncio.to_thread(self.store.newest_event_id)
                while True:
                    if self._flush_task is None or self._flush_task.done():
                        self._flush_task = asyncio.create_task(self.flush())
                        self._flush_task.add_done_callback(self._after_flush)
                    held = await asyncio.shield(self._flush_task)
                    # A flush already under way may have read the outbox before the caller's event
                    # was in it: then one more.
                    if await self._published_through(newest):
                        return True
                    if not held:
                        await asyncio.sleep(self.poll)
        except TimeoutError:
            return False
        except Exception as exc:  # Kafka refused: the events wait in the outbox
            log.warning("events wait in the outbox until Kafka takes them: %s", exc)
            return False

    async def _published_through(self, event_id: int) -> bool:
        oldest = await asyncio.to_thread(self.store.pending_events, 1)
        return not oldest or oldest[0][0] > event_id

    def _after_flush(self, task: asyncio.Task[bool]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._wake.set()  # let the loop retry after its interval rather than wait for a caller

    async def run(self) -> None:
        """Forever: publish what a crash, an outage or another replica left in the outbox; every
        `poll` seconds while this relay holds the lease, every `interval` seconds otherwise. On
        stopping, the lease is let go, so another replica takes over at once."""
        try:
            while True:
                pause = self.interval
                try:
                    if await self.flush() and self.lease is not None:
                        pause = self.poll
                except Exception as exc:  # Kafka down: the events wait in the outbox
                    log.warning("outbox: publishing failed, will retry: %s", exc)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
        finally:
            await self.release()

    async def release(self) -> None:
        """Let the lease go (if this relay has one); another replica's relay takes it at its next
        attempt."""
        if self.lease is not None:
            try:  # bounded: a replica stopping does not wait on a busy or unreachable database
                await asyncio.wait_for(asyncio.to_thread(self.lease.release), RELEASE_WAIT_SECONDS)
            except Exception as exc:  # the database is gone: the lease expires by itself
                log.warning("outbox: could not release the lease, it expires by itself: %s", exc)
