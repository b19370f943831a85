"""Kafka plumbing shared by every service: the broker, at-least-once subscribers, dead letters.

Delivery is at-least-once: a message's offset is committed only after its handler returns, so a
crash at any point redelivers it, and every handler is idempotent. A handler that fails with a
*permanent* error (a malformed event, a domain rule it breaks) would fail forever, so the message
is moved to the dead-letter topic with the reason and processing goes on; any other failure is
retried after a pause.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, Literal, TypedDict

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream._internal.middlewares import BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from opentelemetry import trace
from prometheus_client import REGISTRY, Counter

from shared.errors import is_permanent
from shared.events import Event, Topics, cloudevent_headers
from shared.settings import ServiceSettings

__all__ = ["DeadLetters", "SubscriberOptions", "build_broker", "publish_event", "subscriber_options"]

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter(
    "cascade_dead_letters_total", "Messages moved to the dead-letter topic.", ["service", "topic"]
)

# Headers on a dead letter, beside the original message's own headers and its exact bytes.
DLQ_REASON = "cascade_dlq_reason"
DLQ_TOPIC = "cascade_dlq_topic"
DLQ_PARTITION = "cascade_dlq_partition"
DLQ_OFFSET = "cascade_dlq_offset"
DLQ_SERVICE = "cascade_dlq_service"


class DeadLetters:
    """Builds the middleware that moves permanently failing messages to the dead-letter topic."""

    def __init__(self, topic: str, service: str, retry_backoff_seconds: float) -> None:
        self.topic = topic
        self.service = service
        self.retry_backoff_seconds = retry_backoff_seconds
        self.broker: KafkaBroker | None = None

    def middleware(self, msg: Any, /, *, context: Any) -> BaseMiddleware[Any, Any]:
        return _DeadLetterMiddleware(msg, context=context, dead_letters=self)

    async def send(self, record: ConsumerRecord[Any, Any], reason: str) -> None:
        assert self.broker is not None, "DeadLetters.broker is set by build_broker"
        headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
        headers.update(
            {
                DLQ_REASON: reason[:2000],
                DLQ_TOPIC: record.topic,
                DLQ_PARTITION: str(record.partition),
                DLQ_OFFSET: str(record.offset),
                DLQ_SERVICE: self.service,
            }
        )
        await self.broker.publish(record.value or b"", topic=self.topic, key=record.key, headers=headers)
        DEAD_LETTERS.labels(self.service, record.topic).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason[:500]
        )


class _DeadLetterMiddleware(BaseMiddleware[Any, Any]):
    def __init__(self, msg: Any, /, *, context: Any, dead_letters: DeadLetters) -> None:
        super().__init__(msg, context=context)
        self.dead_letters = dead_letters

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        if exc_val is None or not isinstance(self.msg, ConsumerRecord):
            return False
        if isinstance(exc_val, asyncio.CancelledError):
            return False
        if is_permanent(exc_val):
            await self.dead_letters.send(self.msg, f"{type(exc_val).__name__}: {exc_val}")
            return True  # handled: the message is acknowledged and consumption goes on
        log.error(
            "handler failed on %s[%d]@%d, will retry: %r",
            self.msg.topic,
            self.msg.partition,
            self.msg.offset,
            exc_val,
        )
        await asyncio.sleep(self.dead_letters.retry_backoff_seconds)
        return False  # the subscriber's NACK_ON_ERROR seeks back: the message is redelivered


class _DestinationAttributeMiddleware(BaseMiddleware[Any, Any]):
    """FastStream names a consumer span's topic `messaging.destination_publish.name`; the messaging
    semantic conventions also want `messaging.destination.name` there, which backends group by."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        # Runs inside the telemetry middleware's scope, so the current span is the process span.
        if isinstance(self.msg, ConsumerRecord):
            trace.get_current_span().set_attribute("messaging.destination.name", self.msg.topic)
        return await call_next(msg)


def build_broker(settings: ServiceSettings, service: str) -> KafkaBroker:
    """A broker with tracing, Prometheus metrics and dead-lettering, durable (acks=all) producing."""
    topics = Topics(settings.topic_prefix)
    dead_letters = DeadLetters(topics.dead_letter, service, settings.retry_backoff_seconds)
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"cascade-{service}",
        acks="all",
        enable_idempotence=True,
        graceful_timeout=settings.shutdown_grace_seconds,
        middlewares=(
            dead_letters.middleware,
            KafkaTelemetryMiddleware(),
            _DestinationAttributeMiddleware,
            KafkaPrometheusMiddleware(registry=REGISTRY, app_name=service),
        ),
        logger=logging.getLogger(f"cascade.{service}.kafka"),
    )
    dead_letters.broker = broker
    return broker


class SubscriberOptions(TypedDict):
    """Typed, so that `broker.subscriber(topic, **options)` resolves to a typed subscriber for mypy."""

    group_id: str
    ack_policy: AckPolicy
    auto_offset_reset: Literal["earliest"]


def subscriber_options(group_id: str) -> SubscriberOptions:
    """Options for at-least-once consumption by a consumer group."""
    return {
        "group_id": group_id,
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "auto_offset_reset": "earliest",
    }


async def publish_event(broker: KafkaBroker, topics: Topics, event: Event) -> None:
    """Publish an event keyed by its subject, with CloudEvents headers, and wait for the ack."""
    await broker.publish(
        event,
        topic=topics.for_event(type(event)),
        key=event.subject.encode(),
        headers=cloudevent_headers(event),
    )
