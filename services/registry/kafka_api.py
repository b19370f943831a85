"""The registry's Kafka side: verdicts from the validator move aliases; the loop's events (its own
promotions and rollbacks, verdicts, drift, serving's refusals, dead letters) become chat notifications."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from opentelemetry import trace
from pydantic import ValidationError

from cascade.errors import InvalidArgument
from cascade.events import (
    DriftDetected,
    Event,
    ModelApprovalDecided,
    ModelApprovalRequested,
    ModelLoadFailed,
    ModelPromoted,
    ModelTrafficChanged,
    ModelValidated,
    Topics,
    decode_event,
)
from cascade.json_limits import JsonTooLarge, check_json_limits
from cascade.messaging import subscriber_options
from cascade.services.registry.core import RegistryCore
from cascade.services.registry.notifications import Notifier

log = logging.getLogger(__name__)

# The events notifications are made of.
NOTIFIED_EVENTS: tuple[type[Event], ...] = (
    ModelPromoted,
    ModelValidated,
    DriftDetected,
    ModelLoadFailed,
    ModelApprovalRequested,
    ModelApprovalDecided,
    ModelTrafficChanged,  # its rollbacks
)


def register(
    broker: KafkaBroker,
    core: RegistryCore,
    topics: Topics,
    notifier: Notifier | None = None,
    limits: tuple[int, int] = (1024 * 1024, 64),
) -> None:
    @broker.subscriber(topics.declared(ModelValidated), **subscriber_options(f"{topics.prefix}.registry"))
    async def on_model_validated(event: ModelValidated) -> None:
        await core.on_validated(event)

    if notifier is not None:
        register_notifications(broker, notifier, topics, limits)


async def _undecoded(message: StreamMessage[Any], _decode: Callable[..., Awaitable[Any]]) -> bytes:
    """The body as it came: these consumers read bytes, so no body fails before the handler."""
    return message.body


def register_notifications(
    broker: KafkaBroker, notifier: Notifier, topics: Topics, limits: tuple[int, int] = (1024 * 1024, 64)
) -> None:
    """Two consumers of their own group, so notifications never hold up the verdicts: one for the
    events, one counting dead letters. Each only records delivery jobs; the notifier sends them.

    They are onlookers: a message that is no event is skipped, not dead-lettered, since the topic's
    own consumer (the validator's verdict's registry, serving, the monitor) dead-letters it."""
    # `<prefix>.<service>...`: `cascade status` counts its lag as the registry's.
    group = f"{topics.prefix}.registry.notifications"
    max_bytes, max_depth = limits

    @broker.subscriber(
        *(topics.declared(event_type) for event_type in NOTIFIED_EVENTS),
        decoder=_undecoded,
        **subscriber_options(group),
    )
    async def on_loop_event(message: KafkaMessage) -> None:
        event = _event(message.headers.get("ce_type", ""), message.body, max_bytes, max_depth)
        if event is None:
            log.warning("notifications: skipped a message on %s that is no event", message.raw_message.topic)  # type: ignore[union-attr]
            return
        await notifier.take(event, _trace_id())

    @broker.subscriber(topics.dead_letter, decoder=_undecoded, **subscriber_options(f"{group}.dead-letters"))
    async def on_dead_letter(message: KafkaMessage) -> None:
        # A dead letter is whatever failed: its bytes are never parsed, only its headers read.
        await notifier.take_dead_letter(dict(message.headers))


def _event(event_type: str, body: bytes, max_bytes: int, max_depth: int) -> Event | None:
    """The event a message carries, by its ce_type header (else its body's `type`); None if none."""
    try:
        check_json_limits(body, max_bytes=max_bytes, max_depth=max_depth)
        if not event_type:
            document = json.loads(body)
            event_type = str(document.get("type", "")) if isinstance(document, dict) else ""
        return decode_event(event_type, body)
    except (JsonTooLarge, InvalidArgument, ValidationError, ValueError):
        return None


def _trace_id() -> str:
    """The trace this message belongs to (the consumer span continues the producer's), if traced."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
