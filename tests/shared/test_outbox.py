import asyncio
from collections.abc import Sequence

import pytest
from faststream.kafka import TestKafkaBroker

from cascade.events import DataArrived, Event, EventTooLarge, ModelPromoted, Topics, decode_event
from cascade.messaging import build_broker, publish_event, subscriber_options
from cascade.outbox import OutboxRelay, PendingEvent
from cascade.settings import ServiceSettings


class _MemoryOutbox:
    def __init__(self, events: list[Event]) -> None:
        self.rows = {i: (e.type, e.model_dump_json(), False) for i, e in enumerate(events, start=1)}

    def pending_events(self, limit: int | None = None) -> list[PendingEvent]:
        pending = [(i, t, j) for i, (t, j, done) in sorted(self.rows.items()) if not done]
        return pending[:limit] if limit is not None else pending

    def newest_event_id(self) -> int:
        return max(self.rows, default=0)

    def mark_published(self, event_ids: Sequence[int]) -> None:
        for i in event_ids:
            event_type, event_json, _ = self.rows[i]
            self.rows[i] = (event_type, event_json, True)


def _arrived(n: int) -> DataArrived:
    return DataArrived(
        source="cascade/ingest",
        subject="wine",
        dataset="wine",
        dataset_version=f"v{n}",
        batch_id=f"b{n}",
        rows=n,
        target="target",
        task="classification",
    )


async def test_the_relay_publishes_oldest_first_in_batches_and_marks_them() -> None:
    events: list[Event] = [_arrived(n) for n in range(1, 8)]
    events.append(ModelPromoted(source="r", subject="wine", model="wine", model_version=1, actor="a"))
    store = _MemoryOutbox(events)
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    await OutboxRelay(store, publish, batch_size=3).flush()
    assert published == events  # decoded into their own classes, in order
    assert store.pending_events() == []


async def test_a_failed_publish_keeps_it_and_the_rest_for_the_next_flush() -> None:
    store = _MemoryOutbox([_arrived(1), _arrived(2), _arrived(3)])
    published: list[str] = []
    kafka_up = False

    async def publish(event: Event) -> None:
        if event.dataset_version == "v2" and not kafka_up:
            raise ConnectionError("broker down")
        published.append(event.dataset_version or "")

    relay = OutboxRelay(store, publish)
    with pytest.raises(ConnectionError):
        await relay.flush()
    assert [i for i, _, _ in store.pending_events()] == [2, 3]
    kafka_up = True
    await relay.flush()
    assert published == ["v1", "v2", "v3"] and store.pending_events() == []


async def test_announce_answers_within_its_wait_while_kafka_hangs_and_the_loop_publishes_later() -> None:
    store = _MemoryOutbox([_arrived(1)])
    kafka_back, delivered = asyncio.Event(), asyncio.Event()
    published: list[Event] = []

    async def publish(event: Event) -> None:
        await kafka_back.wait()  # what a producer does during an outage: wait for the broker
        published.append(event)
        delivered.set()

    relay = OutboxRelay(store, publish, interval=0.05)
    assert await relay.announce(0.05) is False  # not drained, and the caller is answered
    assert published == [] and len(store.pending_events()) == 1
    loop = asyncio.create_task(relay.run())
    try:
        kafka_back.set()
        await asyncio.wait_for(delivered.wait(), 10)
        assert await relay.announce(5.0) is True  # drained: marked published
    finally:
        loop.cancel()
    assert [e.dataset_version for e in published] == ["v1"] and store.pending_events() == []


async def test_announce_reports_a_refusing_broker_as_pending() -> None:
    store = _MemoryOutbox([_arrived(1)])

    async def publish(event: Event) -> None:
        raise ConnectionError("broker down")

    assert await OutboxRelay(store, publish).announce(1.0) is False
    assert len(store.pending_events()) == 1


def test_an_event_over_its_bound_is_refused_with_the_limit() -> None:
    small = _arrived(1)
    assert decode_event(small.type, small.encoded()) == small
    huge = small.model_copy(update={"target": "t" * (DataArrived.MAX_BYTES + 1)})
    with pytest.raises(EventTooLarge, match=f"exceeds its limit of {DataArrived.MAX_BYTES} bytes"):
        huge.encoded()
    assert all(0 < cls.MAX_BYTES < 1024 * 1024 for cls in (DataArrived, ModelPromoted, Event))


async def test_publishing_refuses_an_event_over_its_bound_and_sends_one_within_it() -> None:
    broker = build_broker(ServiceSettings(), "test")
    topics = Topics("size")
    received: list[DataArrived] = []

    @broker.subscriber(topics.for_event(DataArrived), **subscriber_options("g"))
    async def on_data_arrived(event: DataArrived) -> None:
        received.append(event)

    huge = _arrived(1).model_copy(update={"target": "t" * DataArrived.MAX_BYTES})
    async with TestKafkaBroker(broker):
        with pytest.raises(EventTooLarge):
            await publish_event(broker, topics, huge)
        await publish_event(broker, topics, _arrived(2))
    assert [e.dataset_version for e in received] == ["v2"]


async def test_concurrent_announcements_each_see_their_event_published() -> None:
    store = _MemoryOutbox([])
    published: list[str] = []
    first_sending = asyncio.Event()
    release = asyncio.Event()

    async def publish(event: Event) -> None:
        first_sending.set()
        await release.wait()  # the first flush is under way when the second event is stored
        published.append(event.dataset_version or "")

    relay = OutboxRelay(store, publish)
    store.rows[1] = (_arrived(1).type, _arrived(1).model_dump_json(), False)
    first = asyncio.create_task(relay.announce(10.0))
    await first_sending.wait()
    store.rows[2] = (_arrived(2).type, _arrived(2).model_dump_json(), False)
    second = asyncio.create_task(relay.announce(10.0))
    release.set()
    assert await first and await second
    assert published == ["v1", "v2"] and store.pending_events() == []
