"""Kafka plumbing shared by every service: the broker, at-least-once subscribers, dead letters.

Delivery is at-least-once: a message's offset is committed only after its handler returns, so a
crash at any point redelivers it, and every handler is idempotent. No message may stop its
partition for long:

- A body over `max_message_bytes` or nested deeper than `max_json_depth` is refused before it is
  parsed (the broker's decoder), so it is dead-lettered on its first delivery.
- A handler that fails with a *permanent* error (a malformed event, a domain rule it breaks) would
  fail forever, so the message is moved to the dead-letter topic with the reason at once.
- Any other failure is retried with capped exponential backoff (the subscriber seeks back to the
  message) within a budget per message: `retry_max_attempts` tries (`retry_unknown_max_attempts` for
  errors nobody classified, see cascade.errors) and `retry_max_seconds`. Then it is dead-lettered
  with `retries exhausted after N attempts: <last error>` and the partition moves on.

While a message is being retried the service is *degraded*; `DeadLetters.failing()` says which,
and cascade.service turns it into health and metrics.

A batch subscriber (`batch_subscriber_options`, its handler calling `consume_batch`) keeps these
rules for each message of a batch: each one is checked against the limits and parsed on its own, and
one that is malformed, or whose event fails permanently, is dead-lettered while its batch-mates are
handled. Any other failure fails the whole batch, which is then retried (the subscriber seeks back to
each partition's earliest record of it) within the same budget, counted from that record, and
dead-lettered record by record when the budget is spent (or at once, when the handler raises a
permanent error for the batch as a whole). Offsets are committed only after the handler returns, so
a crash redelivers the whole batch, and a retried batch's events that had succeeded are handled
again (at-least-once, as for single messages).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypedDict, TypeVar

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream._internal.middlewares import BaseMiddleware
from faststream.exceptions import IgnoredException
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from opentelemetry import trace
from prometheus_client import REGISTRY, Counter
from pydantic import BaseModel

from cascade.errors import classify
from cascade.events import Event, Topics, cloudevent_headers
from cascade.json_limits import JsonTooLarge, check_json_limits
from cascade.kafka_security import faststream_security
from cascade.settings import ServiceSettings

__all__ = [
    "DLQ_OFFSET",
    "DLQ_PARTITION",
    "DLQ_REASON",
    "DLQ_SERVICE",
    "DLQ_TIME",
    "DLQ_TOPIC",
    "REPLAYED_FROM",
    "REPLAY_COUNT",
    "BatchSubscriberOptions",
    "DeadLetters",
    "Failing",
    "HandleMany",
    "RetryBudget",
    "SubscriberOptions",
    "batch_subscriber_options",
    "build_broker",
    "consume_batch",
    "dead_letters_of",
    "each_concurrently",
    "publish_event",
    "subscriber_options",
]

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter(
    "cascade_dead_letters_total", "Messages moved to the dead-letter topic.", ["service", "topic"]
)
RETRIES = Counter(
    "cascade_message_retries_total",
    "Redeliveries of a message whose handler failed with an error worth retrying.",
    ["service", "topic"],
)

# Headers on a dead letter, beside the original message's own headers and its exact bytes.
DLQ_REASON = "cascade_dlq_reason"
DLQ_TOPIC = "cascade_dlq_topic"
DLQ_PARTITION = "cascade_dlq_partition"
DLQ_OFFSET = "cascade_dlq_offset"
DLQ_SERVICE = "cascade_dlq_service"
DLQ_TIME = "cascade_dlq_time"  # when it was dead-lettered, ISO 8601 UTC
# Set by `cascade dlq replay` on a message it puts back on its source topic; a replayed message
# that fails again is dead-lettered with them, so the dead letter shows its history.
REPLAYED_FROM = "cascade_replayed_from"  # "<dead-letter topic>:<partition>:<offset>"
REPLAY_COUNT = "cascade_replay_count"

Position = tuple[str, int, int]  # topic, partition, offset
Message = TypeVar("Message", bound=BaseModel)  # an event, or a plain JSON model like LabelsArrived
# A batch handler: the batch's events in order, one outcome each (None, or the error it failed with).
HandleMany = Callable[[Sequence[Message]], Awaitable[Sequence[BaseException | None]]]
_CHECK_ON_LOOP_BYTES = 64 * 1024


@dataclass(frozen=True)
class RetryBudget:
    """How long one failing message may hold its partition (the settings' retry_* fields)."""

    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 30.0
    max_attempts: int = 10
    unknown_max_attempts: int = 3
    max_seconds: float = 300.0

    @classmethod
    def of(cls, settings: ServiceSettings) -> RetryBudget:
        return cls(
            backoff_seconds=settings.retry_backoff_seconds,
            backoff_max_seconds=settings.retry_backoff_max_seconds,
            max_attempts=settings.retry_max_attempts,
            unknown_max_attempts=min(settings.retry_unknown_max_attempts, settings.retry_max_attempts),
            max_seconds=settings.retry_max_seconds,
        )

    def backoff(self, attempts: int) -> float:
        """The pause after the `attempts`-th failed try: doubling from backoff_seconds, capped."""
        return min(self.backoff_seconds * 2.0 ** min(attempts - 1, 32), self.backoff_max_seconds)


@dataclass(frozen=True)
class Failing:
    """A message that failed and waits for its next try."""

    topic: str
    partition: int
    offset: int
    attempts: int
    seconds: float  # since its first failure
    last_error: str


@dataclass
class _Failure:
    first_failed: float
    last_failed: float
    attempts: int = 0
    last_error: str = ""


class DeadLetters:
    """Builds the middleware that retries failing messages within a budget and moves those that
    cannot succeed to the dead-letter topic, and the decoder that refuses hostile bodies unparsed.

    Tries are counted per message position (topic, partition, offset) in this process, since the
    seek-back redelivers the very same record; a restart starts the count again.
    """

    def __init__(
        self,
        topic: str,
        service: str,
        budget: RetryBudget | None = None,
        *,
        max_message_bytes: int = 1024 * 1024,
        max_json_depth: int = 64,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.topic = topic
        self.service = service
        self.budget = budget or RetryBudget()
        self.max_message_bytes = max_message_bytes
        self.max_json_depth = max_json_depth
        self.broker: KafkaBroker | None = None
        self._clock = clock
        self._sleep = sleep
        self._failures: dict[Position, _Failure] = {}

    def middleware(self, msg: Any, /, *, context: Any) -> BaseMiddleware[Any, Any]:
        return _DeadLetterMiddleware(msg, context=context, dead_letters=self)

    async def decode(
        self, message: KafkaMessage, original_decoder: Callable[[KafkaMessage], Awaitable[Any]]
    ) -> Any:
        """The broker's decoder: limits on the raw body first, then FastStream's own JSON decoding.
        JsonTooLarge is permanent, so the middleware dead-letters the message at its first try.
        A dead letter itself is what it is: one over the limits is handed over as raw bytes.
        A batch is handed over undecoded (its raw bodies): `consume_batch` checks and parses each
        message on its own, so that a bad one does not fail its batch-mates."""
        if isinstance(message.raw_message, tuple | list):
            return message.body
        check = functools.partial(
            check_json_limits, message.body, max_bytes=self.max_message_bytes, max_depth=self.max_json_depth
        )
        try:
            # Microseconds for an event; tens of milliseconds for a large body full of strings,
            # which then runs beside the loop rather than on it.
            if len(message.body) > _CHECK_ON_LOOP_BYTES:
                await asyncio.to_thread(check)
            else:
                check()
        except JsonTooLarge:
            if message.raw_message.topic == self.topic:
                return message.body
            raise
        return await original_decoder(message)

    def failing(self) -> list[Failing]:
        """Messages failing now, oldest first. A failure the consumer has not come back to within a
        backoff (its partition moved to another consumer) is forgotten."""
        now = self._clock()
        stale_after = self.budget.backoff_max_seconds + 60.0
        for position, failure in list(self._failures.items()):
            if now - failure.last_failed > stale_after:
                del self._failures[position]
        return sorted(
            (
                Failing(*position, failure.attempts, now - failure.first_failed, failure.last_error)
                for position, failure in self._failures.items()
            ),
            key=lambda failing: -failing.seconds,
        )

    def succeeded(self, record: ConsumerRecord[Any, Any]) -> None:
        self.succeeded_batch([record])

    def succeeded_batch(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        for position in _earliest(records):
            self._failures.pop(position, None)

    async def failed(self, record: ConsumerRecord[Any, Any], error: Exception) -> bool:
        """Dead-letter `record` (True: acknowledge it) or pause before its retry (False: seek back)."""
        return await self.failed_batch([record], error)

    async def failed_batch(self, records: Sequence[ConsumerRecord[Any, Any]], error: Exception) -> bool:
        """Dead-letter every record of a batch that failed as a whole (True: acknowledge it) or pause
        before its retry (False: seek back). Its tries are counted from each partition's earliest
        record, where the seek-back redelivers it from."""
        positions = _earliest(records)
        record = records[0]
        described = f"{type(error).__name__}: {error}"
        kind = classify(error)
        if kind == "permanent":
            for each in records:
                await self.send(each, described)
            for position in positions:
                self._failures.pop(position, None)
            return True
        now = self._clock()
        known = [self._failures[position] for position in positions if position in self._failures]
        failure = known[0] if known else _Failure(first_failed=now, last_failed=now)
        for position in positions:  # a batch redelivered with other partitions' records keeps its count
            self._failures[position] = failure
        failure.attempts += 1
        failure.last_failed = now
        failure.last_error = described[:500]
        allowed = self.budget.max_attempts if kind == "transient" else self.budget.unknown_max_attempts
        elapsed = now - failure.first_failed
        if failure.attempts >= allowed or elapsed >= self.budget.max_seconds:
            for each in records:
                await self.send(each, f"retries exhausted after {failure.attempts} attempts: {described}")
            for position in positions:
                self._failures.pop(position, None)
            return True
        pause = min(self.budget.backoff(failure.attempts), self.budget.max_seconds - elapsed)
        RETRIES.labels(self.service, record.topic).inc()
        log.error(
            "handler failed on %s[%d]@%d%s (attempt %d of %d, %s error), retrying in %.1f s: %s",
            record.topic,
            record.partition,
            record.offset,
            f" and {len(records) - 1} more in its batch" if len(records) > 1 else "",
            failure.attempts,
            allowed,
            kind,
            pause,
            described[:500],
        )
        await self._sleep(pause)
        return False

    async def send(self, record: ConsumerRecord[Any, Any], reason: str) -> None:
        from datetime import UTC, datetime

        assert self.broker is not None, "DeadLetters.broker is set by build_broker"
        headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
        headers.update(
            {
                DLQ_REASON: reason[:2000],
                DLQ_TOPIC: record.topic,
                DLQ_PARTITION: str(record.partition),
                DLQ_OFFSET: str(record.offset),
                DLQ_SERVICE: self.service,
                DLQ_TIME: datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        await self.broker.publish(record.value or b"", topic=self.topic, key=record.key, headers=headers)
        DEAD_LETTERS.labels(self.service, record.topic).inc()
        log.warning(
            "dead-lettered %s[%d]@%d%s: %s",
            record.topic,
            record.partition,
            record.offset,
            f" (replayed {headers[REPLAY_COUNT]} times)" if REPLAY_COUNT in headers else "",
            reason[:500],
        )

    async def consume_batch(
        self,
        records: Sequence[ConsumerRecord[Any, Any]],
        event_type: type[Message],
        handle: HandleMany[Message],
    ) -> None:
        """Parse each record as `event_type` (pydantic) and hand the events to `handle` together;
        returns once it has. A record over the limits or not an `event_type` is dead-lettered with
        its reason, and so is an event whose outcome is a permanent error; any other outcome error
        (and anything `handle` raises) fails the batch, which the middleware retries within the
        budget."""
        parsed: list[tuple[ConsumerRecord[Any, Any], Message]] = []
        for record in records:
            try:
                parsed.append((record, await self._parse(record, event_type)))
            except (JsonTooLarge, ValueError) as exc:  # pydantic's ValidationError is a ValueError
                await self.send(record, f"{type(exc).__name__}: {exc}")
        if not parsed:
            return
        outcomes = await handle([event for _, event in parsed])
        if len(outcomes) != len(parsed):
            raise RuntimeError(f"a batch handler gave {len(outcomes)} outcomes for {len(parsed)} events")
        retry: BaseException | None = None
        for (record, _), outcome in zip(parsed, outcomes, strict=True):
            if outcome is None:
                continue
            if isinstance(outcome, Exception) and classify(outcome) == "permanent":
                await self.send(record, f"{type(outcome).__name__}: {outcome}")
            elif retry is None or not isinstance(outcome, Exception):  # a cancellation wins
                retry = outcome
        if retry is not None:
            raise retry

    async def _parse(self, record: ConsumerRecord[Any, Any], event_type: type[Message]) -> Message:
        body: bytes = record.value or b""
        check = functools.partial(
            check_json_limits, body, max_bytes=self.max_message_bytes, max_depth=self.max_json_depth
        )
        if len(body) > _CHECK_ON_LOOP_BYTES:
            await asyncio.to_thread(check)
        else:
            check()
        return event_type.model_validate_json(body)


def each_concurrently(handle: Callable[[Message], Awaitable[object]]) -> HandleMany[Message]:
    """A batch handler that handles the events one by one, all at once: each one's error is its
    outcome."""

    async def handle_many(events: Sequence[Message]) -> list[BaseException | None]:
        outcomes = await asyncio.gather(*(handle(event) for event in events), return_exceptions=True)
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    return handle_many


def _earliest(records: Sequence[ConsumerRecord[Any, Any]]) -> list[Position]:
    """Each partition's earliest record of a batch: where a seek-back redelivers it from."""
    earliest: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        earliest[key] = min(record.offset, earliest.get(key, record.offset))
    return [(topic, partition, offset) for (topic, partition), offset in earliest.items()]


async def consume_batch(
    broker: KafkaBroker, message: KafkaMessage, event_type: type[Message], handle: HandleMany[Message]
) -> None:
    """The body of a batch subscriber's handler (`batch_subscriber_options`): the batch's messages
    parsed as `event_type` and handed to `handle` together, with the dead-letter rules kept per
    message (`DeadLetters.consume_batch`)."""
    dead_letters = dead_letters_of(broker)
    assert dead_letters is not None, "a batch subscriber needs a broker made by build_broker"
    await dead_letters.consume_batch(_records(message.raw_message), event_type, handle)


def _is_batch(raw: Any) -> bool:
    """Whether `raw` is a batch subscriber's records: a tuple from the consumer, a list from
    TestKafkaBroker."""
    return isinstance(raw, tuple | list) and bool(raw) and all(isinstance(r, ConsumerRecord) for r in raw)


def _records(raw: Any) -> list[ConsumerRecord[Any, Any]]:
    if not _is_batch(raw):
        raise TypeError(f"not a batch of Kafka records: {type(raw).__name__}")
    return list(raw)


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
        if isinstance(self.msg, ConsumerRecord):
            records = [self.msg]
        elif _is_batch(self.msg):
            records = list(self.msg)
        else:
            return False
        record = records[0]
        if exc_val is None:
            self.dead_letters.succeeded_batch(records)
            return False
        # Cancellation, FastStream's own control flow (AckMessage, StopConsume...) and SystemExit
        # are not failures of the message.
        if not isinstance(exc_val, Exception) or isinstance(exc_val, IgnoredException):
            return False
        if record.topic == self.dead_letters.topic:
            # A consumer of the dead letters must not feed them back to themselves.
            log.error(
                "dropped dead letter %s[%d]@%d that failed again: %r",
                record.topic,
                record.partition,
                record.offset,
                exc_val,
            )
            return True
        # True: handled, the message (batch) is acknowledged and consumption goes on. False: the
        # subscriber's NACK_ON_ERROR seeks back and the message (batch) is redelivered.
        return await self.dead_letters.failed_batch(records, exc_val)


class _DestinationAttributeMiddleware(BaseMiddleware[Any, Any]):
    """FastStream names a consumer span's topic `messaging.destination_publish.name`; the messaging
    semantic conventions also want `messaging.destination.name` there, which backends group by."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        # Runs inside the telemetry middleware's scope, so the current span is the process span.
        if isinstance(self.msg, ConsumerRecord):
            trace.get_current_span().set_attribute("messaging.destination.name", self.msg.topic)
        elif _is_batch(self.msg):
            trace.get_current_span().set_attribute("messaging.destination.name", self.msg[0].topic)
        return await call_next(msg)


# Each broker's dead letters, for the service runtime's health (a broker has no slot of its own).
_DEAD_LETTERS: weakref.WeakKeyDictionary[KafkaBroker, DeadLetters] = weakref.WeakKeyDictionary()


def dead_letters_of(broker: KafkaBroker) -> DeadLetters | None:
    """The dead letters of a broker made by `build_broker`."""
    return _DEAD_LETTERS.get(broker)


def build_broker(settings: ServiceSettings, service: str) -> KafkaBroker:
    """A broker with tracing, Prometheus metrics, bounded retries and dead-lettering, limits on what
    it decodes, and durable (acks=all) producing."""
    topics = Topics(settings.topic_prefix)
    dead_letters = DeadLetters(
        topics.dead_letter,
        service,
        RetryBudget.of(settings),
        max_message_bytes=settings.max_message_bytes,
        max_json_depth=settings.max_json_depth,
    )
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"cascade-{service}",
        security=faststream_security(settings),
        acks="all",
        enable_idempotence=True,
        metadata_max_age_ms=int(settings.kafka_metadata_max_age_seconds * 1000),
        graceful_timeout=settings.shutdown_grace_seconds,
        middlewares=(
            dead_letters.middleware,
            KafkaTelemetryMiddleware(),
            _DestinationAttributeMiddleware,
            KafkaPrometheusMiddleware(registry=REGISTRY, app_name=service),
        ),
        logger=logging.getLogger(f"cascade.{service}.kafka"),
        decoder=dead_letters.decode,
    )
    dead_letters.broker = broker
    _DEAD_LETTERS[broker] = dead_letters
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


class BatchSubscriberOptions(TypedDict):
    """`SubscriberOptions` for a batch subscriber, typed so mypy picks the batch overload."""

    group_id: str
    ack_policy: AckPolicy
    auto_offset_reset: Literal["earliest"]
    batch: Literal[True]
    max_records: int
    batch_timeout_ms: int


def batch_subscriber_options(
    group_id: str, *, max_records: int = 64, batch_timeout_ms: int = 100
) -> BatchSubscriberOptions:
    """Options for at-least-once consumption in batches of up to `max_records` (what has arrived
    when the consumer polls, waiting up to `batch_timeout_ms` only when nothing has): the batch's
    offsets are committed once its handler, which calls `consume_batch`, returns."""
    return {
        **subscriber_options(group_id),
        "batch": True,
        "max_records": max_records,
        "batch_timeout_ms": batch_timeout_ms,
    }


async def publish_event(broker: KafkaBroker, topics: Topics, event: Event) -> None:
    """Publish an event keyed by its subject, with CloudEvents headers, and wait for the ack. An
    event over its type's size bound is refused here (EventTooLarge, with the limit), not by the
    producer."""
    event.encoded()
    await broker.publish(
        event,
        topic=topics.for_event(type(event)),
        key=event.subject.encode(),
        headers=cloudevent_headers(event),
    )
