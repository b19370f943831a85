"""Two ingest replicas on one database (a SQLite file, a PostgreSQL database) share one outbox, and
their relays take turns through its lease: every event leaves once and in the order it was stored;
a holder that stalls loses the lease, and the other replica publishes what is left."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from cascade.events import DataArrived, Event
from cascade.outbox import OutboxRelay
from cascade.services.ingest import tables
from cascade.services.ingest.core import IngestCore
from cascade.services.ingest.store import IngestStore

Emit = Callable[[Event], Awaitable[None]]


def _frame(start: int, rows: int) -> pd.DataFrame:
    values = np.arange(start, start + rows, dtype="float64")
    return pd.DataFrame({"x": values, "y": values * 2.0, "target": (values % 2).astype(int)})


def _recording(replica: str, published: list[tuple[str, Event]]) -> Emit:
    async def emit(event: Event) -> None:
        published.append((replica, event))

    return emit


def _stored_event_ids(store: IngestStore) -> list[str]:
    """Every event in the outbox, in the order it was stored."""
    with store.engine.connect() as connection:
        return list(
            connection.execute(sa.select(tables.outbox.c.event_id).order_by(tables.outbox.c.id)).scalars()
        )


async def _drained(store: IngestStore, budget: float = 30.0) -> bool:
    """Whether the outbox empties within `budget` seconds (a retry budget, not a timing claim)."""
    deadline = asyncio.get_running_loop().time() + budget
    while asyncio.get_running_loop().time() < deadline:
        if not await asyncio.to_thread(store.pending_events, 1):
            return True
        await asyncio.sleep(0.05)
    return False


@contextlib.asynccontextmanager
async def _running(*relays: OutboxRelay) -> AsyncIterator[None]:
    loops = [asyncio.create_task(relay.run()) for relay in relays]
    try:
        yield
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


def _arrived(n: int) -> DataArrived:
    return DataArrived(
        source="test",
        subject="d",
        dataset="d",
        dataset_version=f"v{n}",
        batch_id=f"b{n}",
        rows=n,
        target="target",
        task="classification",
    )


async def test_two_replicas_publish_every_event_once_in_the_order_stored(
    tmp_path: Path, database_url: str
) -> None:
    published: list[tuple[str, Event]] = []
    cores = [
        IngestCore(
            IngestStore(tmp_path, database_url), _recording(name, published), outbox_interval_seconds=0.1
        )
        for name in ("a", "b")
    ]
    try:
        await cores[0].ingest("d", _frame(0, 5), "b0", "target", "test")
        async with _running(*(core.outbox for core in cores)):
            results = await asyncio.gather(
                *(cores[n % 2].ingest("d", _frame(5 * n, 5), f"b{n}", "target", "test") for n in range(1, 13))
            )
            assert await _drained(cores[0].store)
        assert all(result.created for result in results)
        stored = _stored_event_ids(cores[0].store)
        assert len(stored) == 13
        assert [event.id for _, event in published] == stored  # each once, oldest first
    finally:
        for core in cores:
            core.store.close()


async def test_a_change_on_the_replica_without_the_lease_is_published_by_the_holder(
    tmp_path: Path, database_url: str
) -> None:
    published: list[tuple[str, Event]] = []
    holder = IngestCore(IngestStore(tmp_path, database_url), _recording("holder", published))
    other = IngestCore(
        IngestStore(tmp_path, database_url), _recording("other", published), event_wait_seconds=30.0
    )
    try:
        assert await holder.outbox.flush()  # takes the lease (nothing to publish yet)
        async with _running(holder.outbox):
            result = await other.ingest("d", _frame(0, 5), "b0", "target", "test")
            assert await other.outbox.flush() is False  # the holder still has the lease
        # The other replica's upload waited for the holder to publish its event, and says so.
        assert result.created and not result.event_pending
        assert [(replica, event.id) for replica, event in published] == [
            ("holder", _stored_event_ids(other.store)[0])
        ]
        # A holder that stops lets the lease go: the other replica takes it at once.
        assert await other.outbox.flush() is True
    finally:
        holder.store.close()
        other.store.close()


async def test_a_stalled_holder_loses_the_lease_and_the_other_replica_publishes_the_rest(
    tmp_path: Path, database_url: str
) -> None:
    stores = [IngestStore(tmp_path, database_url) for _ in range(2)]
    events = [_arrived(n) for n in range(8)]
    for event in events:
        stores[0].ensure_announced(event)
    by_stalled: list[Event] = []
    by_successor: list[tuple[str, Event]] = []
    stalling, stalled_forever = asyncio.Event(), asyncio.Event()

    async def stalls_after_three(event: Event) -> None:
        if len(by_stalled) == 3:
            stalling.set()
            await stalled_forever.wait()  # a hung producer: the holder stops renewing its lease
        by_stalled.append(event)

    stalled = OutboxRelay(stores[0], stalls_after_three, lease=stores[0].lease("outbox", 1.0))
    successor = OutboxRelay(
        stores[1], _recording("successor", by_successor), interval=0.1, lease=stores[1].lease("outbox", 1.0)
    )
    try:
        async with _running(stalled):
            await asyncio.wait_for(stalling.wait(), 30)
            async with _running(successor):
                assert await _drained(stores[1])
        assert [event.id for event in by_stalled] == [event.id for event in events[:3]]
        # The successor publishes, in order, everything the stalled holder had not marked published:
        # the three it sent unmarked go out again (at least once across a hand-over), none is lost.
        assert [event.id for _, event in by_successor] == [event.id for event in events]
    finally:
        for store in stores:
            store.close()


async def test_a_holder_that_cannot_reach_kafka_lets_the_lease_go_to_one_that_can(
    tmp_path: Path, database_url: str
) -> None:
    stores = [IngestStore(tmp_path, database_url) for _ in range(2)]
    events = [_arrived(n) for n in range(3)]
    for event in events:
        stores[0].ensure_announced(event)

    async def unreachable(event: Event) -> None:
        raise ConnectionError("this replica cannot reach the broker")

    published: list[tuple[str, Event]] = []
    cut_off = OutboxRelay(stores[0], unreachable, lease=stores[0].lease("outbox", 30.0))
    connected = OutboxRelay(
        stores[1], _recording("connected", published), lease=stores[1].lease("outbox", 30.0)
    )
    try:
        with pytest.raises(ConnectionError):
            await cut_off.flush()
        # Not after the lease's thirty seconds: at once.
        assert await connected.flush() is True
        assert [event.id for _, event in published] == [event.id for event in events]
        assert await cut_off.flush() is False  # the connected replica holds it now
    finally:
        for store in stores:
            store.close()
