"""The dead-letter rules for a batch subscriber (batch_subscriber_options + consume_batch), in memory
(TestKafkaBroker): a bad message is dead-lettered alone, a batch failing as a whole is not
acknowledged (each partition is sought back to its earliest record) and is retried within the budget,
then dead-lettered record by record."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.message import FakeConsumer

from cascade.errors import InvalidArgument, Unavailable
from cascade.events import DataArrived, Topics
from cascade.messaging import (
    DLQ_REASON,
    DeadLetters,
    RetryBudget,
    batch_subscriber_options,
    build_broker,
    consume_batch,
)
from cascade.settings import ServiceSettings

from .test_retry_budget import Clock

HOSTILE = b"[" * 5000 + b"]" * 5000


def arrived(rows: int) -> DataArrived:
    return DataArrived(
        source="s",
        subject="d",
        dataset="d",
        dataset_version="v",
        batch_id=f"b{rows}",
        rows=rows,
        target="t",
        task="regression",
        features=["x"],
    )


@dataclass
class Consumer:
    """How often the subscriber committed its offsets (acknowledged a batch)."""

    commits: int = 0


@dataclass
class Batches:
    broker: KafkaBroker
    topic: str
    handled: list[list[int]]  # each call's events' rows
    dead: list[tuple[bytes, dict[str, str]]]
    consumer: Consumer
    fail_with: list[Exception] = field(default_factory=list)  # the next calls' failures

    async def publish(self, *bodies: Any) -> None:
        await self.broker.publish_batch(*bodies, topic=self.topic)


@pytest.fixture
async def batches(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Batches]:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    settings = ServiceSettings(
        topic_prefix=topics.prefix,
        retry_backoff_seconds=0.0,
        retry_max_attempts=3,
    )
    broker = build_broker(settings, "test")
    consumer = Consumer()

    async def commit(self: FakeConsumer) -> None:
        consumer.commits += 1

    monkeypatch.setattr(FakeConsumer, "commit", commit)
    handled: list[list[int]] = []
    dead: list[tuple[bytes, dict[str, str]]] = []
    state = Batches(broker, topics.for_event(DataArrived), handled, dead, consumer)

    async def handle(events: Sequence[DataArrived]) -> list[BaseException | None]:
        if state.fail_with:
            raise state.fail_with.pop(0)
        handled.append([event.rows for event in events])
        return [InvalidArgument("rows cannot be negative") if event.rows < 0 else None for event in events]

    @broker.subscriber(state.topic, **batch_subscriber_options("g", max_records=16))
    async def on_batch(message: KafkaMessage) -> None:
        await consume_batch(broker, message, DataArrived, handle)

    @broker.subscriber(topics.dead_letter)
    async def on_dead_letter(message: KafkaMessage) -> None:
        dead.append((message.body, {k: str(v) for k, v in message.headers.items()}))

    async with TestKafkaBroker(broker):
        yield state


async def test_bad_messages_of_a_batch_are_dead_lettered_and_the_rest_handled_together(
    batches: Batches,
) -> None:
    await batches.publish(arrived(1), b"{not json", arrived(-1), HOSTILE, arrived(2))

    assert batches.handled == [[1, -1, 2]]  # one call, the parsed events in order
    reasons = [headers[DLQ_REASON] for _, headers in batches.dead]
    assert len(reasons) == 3
    assert reasons[0].startswith("ValidationError")
    assert reasons[1].startswith("JsonTooLarge")
    assert reasons[2] == "InvalidArgument: rows cannot be negative"
    assert batches.dead[0][0] == b"{not json" and batches.dead[1][0] == HOSTILE
    assert batches.consumer.commits == 1  # acknowledged


async def test_a_batch_failing_as_a_whole_is_retried_within_the_budget_then_dead_lettered(
    batches: Batches,
) -> None:
    batches.fail_with = [Unavailable("database is locked")] * 3
    for _ in (1, 2):  # in memory, the redelivery is the same batch published again
        with pytest.raises(Unavailable):
            await batches.publish(arrived(1), arrived(2))
        # Nothing acknowledged. (A real consumer is also sought back to the batch's start; in memory
        # the batch is a list, which FastStream's nack does not take for one.)
        assert batches.consumer.commits == 0
        assert batches.dead == []

    await batches.publish(arrived(1), arrived(2))  # the third try fails too: the budget is spent

    reasons = [headers[DLQ_REASON] for _, headers in batches.dead]
    assert reasons == ["retries exhausted after 3 attempts: Unavailable: database is locked"] * 2
    assert batches.handled == [] and batches.consumer.commits == 1  # moved on

    await batches.publish(arrived(3))  # the next batch is handled
    assert batches.handled == [[3]]


async def test_a_failed_batch_that_recovers_is_handled_once_and_acknowledged(batches: Batches) -> None:
    batches.fail_with = [Unavailable("database is locked")]
    with pytest.raises(Unavailable):
        await batches.publish(arrived(1), arrived(2))
    await batches.publish(arrived(1), arrived(2))

    assert batches.handled == [[1, 2]] and batches.dead == []
    assert batches.consumer.commits == 1


def record(partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="in",
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=b"{}",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=2,
        headers=[],
    )


async def test_a_batch_s_tries_are_counted_from_each_partition_s_earliest_record() -> None:
    clock = Clock()
    dead_letters = DeadLetters(
        "dlq", "test", RetryBudget(max_attempts=3, unknown_max_attempts=3), clock=clock, sleep=clock.sleep
    )
    sent: list[tuple[int, int, str]] = []

    async def send(record: ConsumerRecord[Any, Any], reason: str) -> None:
        sent.append((record.partition, record.offset, reason))

    dead_letters.send = send  # type: ignore[method-assign]
    first = [record(0, 5), record(1, 9), record(0, 6)]
    assert await dead_letters.failed_batch(first, Unavailable("down")) is False
    assert {(f.partition, f.offset, f.attempts) for f in dead_letters.failing()} == {(0, 5, 1), (1, 9, 1)}
    # Redelivered from the same positions, with partition 1's records first and one more record.
    again = [record(1, 9), record(1, 10), record(0, 5), record(0, 6)]
    assert await dead_letters.failed_batch(again, Unavailable("down")) is False
    assert await dead_letters.failed_batch(again, Unavailable("still down")) is True
    assert [(p, o) for p, o, _ in sent] == [(1, 9), (1, 10), (0, 5), (0, 6)]
    assert {reason for _, _, reason in sent} == {
        "retries exhausted after 3 attempts: Unavailable: still down"
    }
    assert dead_letters.failing() == []
