"""The dead-letter mechanism, in memory (TestKafkaBroker); tests/integration proves it on a real broker."""

import uuid

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from cascade.errors import InvalidArgument, Unavailable
from cascade.events import DataArrived, Topics
from cascade.messaging import DLQ_REASON, DLQ_TOPIC, build_broker, subscriber_options
from cascade.settings import ServiceSettings


async def test_malformed_and_permanently_failing_messages_go_to_the_dead_letter_topic() -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    broker = build_broker(ServiceSettings(topic_prefix=topics.prefix, retry_backoff_seconds=0.0), "test")
    handled: list[DataArrived] = []
    dead: list[tuple[bytes, dict[str, str]]] = []

    @broker.subscriber(topics.for_event(DataArrived), **subscriber_options("g"))
    async def on_data_arrived(event: DataArrived) -> None:
        if event.rows < 0:
            raise InvalidArgument("rows cannot be negative")
        handled.append(event)

    @broker.subscriber(topics.dead_letter)
    async def on_dead_letter(message: KafkaMessage) -> None:
        dead.append((message.body, {k: str(v) for k, v in message.headers.items()}))

    good = DataArrived(
        source="s",
        subject="d",
        dataset="d",
        dataset_version="v",
        batch_id="b",
        rows=3,
        target="t",
        task="regression",
        features=["x"],
    )
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(b"{not json", topic=topics.for_event(DataArrived))
        await test_broker.publish(good.model_copy(update={"rows": -1}), topic=topics.for_event(DataArrived))
        await test_broker.publish(good, topic=topics.for_event(DataArrived))

    assert handled == [good]
    assert dead[0][0] == b"{not json"
    reasons = [headers[DLQ_REASON] for _, headers in dead]
    assert "ValidationError" in reasons[0]
    assert reasons[1] == "InvalidArgument: rows cannot be negative"
    assert {headers[DLQ_TOPIC] for _, headers in dead} == {topics.for_event(DataArrived)}


async def test_transient_failures_are_not_dead_lettered() -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    broker = build_broker(ServiceSettings(topic_prefix=topics.prefix, retry_backoff_seconds=0.0), "test")
    dead: list[bytes] = []

    @broker.subscriber(topics.for_event(DataArrived), **subscriber_options("g"))
    async def on_data_arrived(event: DataArrived) -> None:
        raise Unavailable("registry is down")

    @broker.subscriber(topics.dead_letter)
    async def on_dead_letter(body: bytes) -> None:
        dead.append(body)

    async with TestKafkaBroker(broker) as test_broker:
        # The in-memory broker hands the error back to the publisher instead of seeking back.
        with pytest.raises(Unavailable):
            await test_broker.publish(
                DataArrived(
                    source="s",
                    subject="d",
                    dataset="d",
                    dataset_version="v",
                    batch_id="b",
                    rows=3,
                    target="t",
                    task="regression",
                    features=["x"],
                ),
                topic=topics.for_event(DataArrived),
            )
    assert dead == []
