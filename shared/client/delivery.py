"""How messages fare on the stack's Kafka, read from the broker directly: every consumer group's lag,
the dead letters (`cascade dlq`, `cascade status`, the console's Loop page) and the latest events of
the cascade's topics (the Loop page).

Nothing here joins a consumer group: the reads commit nothing and move no one's offsets. aiokafka,
and the event contracts that need faststream, are imported inside the functions: the SDK's base
install has neither, and only these readers want them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from cascade.errors import Unavailable

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = [
    "EVENT_TOPICS",
    "DeadLetter",
    "DeliveryStatus",
    "RecentEvent",
    "delivery_status",
    "read_dead_letters",
    "recent_events",
]

_TIMEOUT_MS = 10_000
# No SSL or SASL options: an unsecured broker.
_PLAINTEXT: Mapping[str, Any] = MappingProxyType({})
# The topics of the cascade's story, by their suffix (cascade.events: `<prefix>.<TOPIC>`). Not the
# predictions topic: it carries every inference, and would drown the rest.
EVENT_TOPICS: tuple[str, ...] = (
    "data-arrived.v1",
    "training-requested.v1",
    "model-trained.v1",
    "model-version-created.v1",
    "model-validated.v1",
    "model-version-status-changed.v1",
    "model-promoted.v1",
    "model-alias-changed.v1",
    "model-load-failed.v1",
    "drift-detected.v1",
)
_SUMMARY_CHARS = 160


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter topic, addressed by its own partition and offset there."""

    partition: int
    offset: int
    reason: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    service: str
    time: str  # when it was dead-lettered, ISO 8601 UTC
    replay_count: int
    replayed_from: str
    key: bytes | None = field(repr=False)
    value: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    def summary(self) -> dict[str, Any]:
        """Everything but the bytes, for --json."""
        described = asdict(self)
        for raw in ("key", "value", "headers"):
            described.pop(raw)
        return {"ref": self.ref, **described, "size": len(self.value)}


@dataclass(frozen=True)
class DeliveryStatus:
    """Per service: consumer lag summed per topic, and dead letters by source topic."""

    lag: dict[str, dict[str, int]]
    dead_letters: dict[str, dict[str, int]]


@dataclass(frozen=True)
class RecentEvent:
    """One event of the cascade's topics, cut down to what a person scanning a list reads."""

    topic: str
    time: datetime
    type: str  # the CloudEvents type without its `io.cascade.` prefix and version: "model.trained"
    subject: str  # the dataset or model it is about
    model: str
    model_version: int | None
    dataset_version: str
    summary: str


# ---------------------------------------------------------------------- reading


def _consumer(bootstrap: str, kafka_options: Mapping[str, Any]) -> AIOKafkaConsumer:
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        enable_auto_commit=False,
        request_timeout_ms=_TIMEOUT_MS,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        **kafka_options,
    )


async def _read_topic(bootstrap: str, topic: str, kafka_options: Mapping[str, Any]) -> list[Any]:
    """Every record of `topic`, read without a consumer group. Subscribed without a group, the
    consumer is given every partition."""
    # Subscribed only once the topic exists: a consumer subscribed to a missing topic logs a warning
    # the person reading would take for a fault.
    consumer = _consumer(bootstrap, kafka_options)
    try:
        await consumer.start()
        if topic not in await consumer.topics():  # nothing dead-lettered yet
            return []
        consumer.subscribe([topic])
        assigned = await _assignment(consumer, topic)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        starts = {tp: await consumer.position(tp) for tp in assigned}
        return await _read_until(consumer, starts, ends, topic)
    finally:
        await consumer.stop()


async def _read_until(
    consumer: AIOKafkaConsumer, starts: dict[TopicPartition, int], ends: dict[TopicPartition, int], what: str
) -> list[Any]:
    """The records from each partition's start up to its end offset."""
    records: list[Any] = []
    pending = {tp for tp in starts if ends[tp] > starts[tp]}
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=_TIMEOUT_MS)
        if not batches:
            raise Unavailable(f"reading {what} stalled; is Kafka healthy?")
        for tp, batch in batches.items():
            records.extend(record for record in batch if record.offset < ends[tp])
            if batch[-1].offset + 1 >= ends[tp]:
                pending.discard(tp)
    return records


async def _assignment(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    deadline = asyncio.get_running_loop().time() + _TIMEOUT_MS / 1000
    while not (assigned := consumer.assignment()):
        if asyncio.get_running_loop().time() > deadline:
            raise Unavailable(f"Kafka gave no partitions of {topic}; is it healthy?")
        await asyncio.sleep(0.05)
    return sorted(assigned)


def _letter(record: Any) -> DeadLetter:
    from cascade.messaging import (
        DLQ_OFFSET,
        DLQ_PARTITION,
        DLQ_REASON,
        DLQ_SERVICE,
        DLQ_TIME,
        DLQ_TOPIC,
        REPLAY_COUNT,
        REPLAYED_FROM,
    )

    headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}

    def number(name: str) -> int | None:
        try:
            return int(headers[name])
        except (KeyError, ValueError):
            return None

    stamped = datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="seconds")
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        reason=headers.get(DLQ_REASON, ""),
        source_topic=headers.get(DLQ_TOPIC, ""),
        source_partition=number(DLQ_PARTITION),
        source_offset=number(DLQ_OFFSET),
        service=headers.get(DLQ_SERVICE, ""),
        time=headers.get(DLQ_TIME, stamped),
        replay_count=number(REPLAY_COUNT) or 0,
        replayed_from=headers.get(REPLAYED_FROM, ""),
        key=record.key,
        value=record.value or b"",
        headers=headers,
    )


async def read_dead_letters(
    bootstrap: str, topic: str, kafka_options: Mapping[str, Any] = _PLAINTEXT
) -> list[DeadLetter]:
    """Every message of the dead-letter `topic`, oldest first per partition. `kafka_options`: how
    to connect (`Stack.kafka_client_options()`: SSL and SASL for a secured stack). Unavailable
    when Kafka cannot be read."""
    try:
        return [_letter(record) for record in await _read_topic(bootstrap, topic, kafka_options)]
    except Unavailable:
        raise
    except Exception as exc:
        raise Unavailable(f"cannot read {topic} from Kafka at {bootstrap}: {exc!r}") from exc


async def delivery_status(
    bootstrap: str, prefix: str, kafka_options: Mapping[str, Any] = _PLAINTEXT
) -> DeliveryStatus:
    """Lag of every consumer group of this stack (named `<prefix>.<service>...`), summed per topic,
    and the dead letters per service and source topic."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap.split(","), request_timeout_ms=5000, **kafka_options
    )
    consumer = _consumer(bootstrap, kafka_options)
    lag: dict[str, dict[str, int]] = {}
    try:
        await admin.start()
        await consumer.start()
        for group in sorted(str(listed[0]) for listed in await admin.list_consumer_groups()):
            if not group.startswith(f"{prefix}."):
                continue
            service = group[len(prefix) + 1 :].split(".")[0]
            committed = await admin.list_consumer_group_offsets(group)
            ends = await consumer.end_offsets(list(committed))
            for partition, offset in committed.items():
                behind = max(ends[partition] - offset.offset, 0) if offset.offset >= 0 else ends[partition]
                per_topic = lag.setdefault(service, {})
                per_topic[partition.topic] = per_topic.get(partition.topic, 0) + behind
    finally:
        await consumer.stop()
        await admin.close()
    from cascade.events import Topics

    letters = await read_dead_letters(bootstrap, Topics(prefix).dead_letter, kafka_options)
    counts = Counter((letter.service, letter.source_topic) for letter in letters)
    dead: dict[str, dict[str, int]] = {}
    for (service, topic), count in sorted(counts.items()):
        dead.setdefault(service, {})[topic] = count
    return DeliveryStatus(lag, dead)


async def recent_events(
    bootstrap: str,
    prefix: str,
    kafka_options: Mapping[str, Any] = _PLAINTEXT,
    *,
    limit: int = 50,
    topics: Sequence[str] = EVENT_TOPICS,
) -> list[RecentEvent]:
    """The latest `limit` events of the cascade's topics (`<prefix>.<topic>`), newest first: the
    last `limit` records of every partition are read, then the newest `limit` of them kept.
    Unavailable when Kafka cannot be read."""
    consumer = _consumer(bootstrap, kafka_options)
    try:
        await consumer.start()
        existing = await consumer.topics()
        wanted = [topic for topic in (f"{prefix}.{name}" for name in topics) if topic in existing]
        if not wanted:
            return []
        # Subscribed without a group, the consumer is given every partition of these topics.
        consumer.subscribe(wanted)
        partitions = await _assignment(consumer, ", ".join(wanted))
        ends = await consumer.end_offsets(partitions)
        beginnings = await consumer.beginning_offsets(partitions)
        starts = {tp: max(ends[tp] - limit, beginnings[tp]) for tp in partitions}
        for tp, start in starts.items():
            consumer.seek(tp, start)
        records = await _read_until(consumer, starts, ends, "the event topics")
    except Unavailable:
        raise
    except Exception as exc:
        raise Unavailable(f"cannot read the events from Kafka at {bootstrap}: {exc!r}") from exc
    finally:
        await consumer.stop()
    records.sort(key=lambda record: record.timestamp, reverse=True)
    return [_event(record) for record in records[:limit]]


def _event(record: Any) -> RecentEvent:
    try:
        body = json.loads(record.value or b"{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    kind = str(body.get("type", ""))
    short = kind.removeprefix("io.cascade.").rsplit(".v", 1)[0] or record.topic
    version = body.get("model_version")
    summary = _summary(short, body)
    return RecentEvent(
        topic=record.topic,
        time=datetime.fromtimestamp(record.timestamp / 1000, UTC),
        type=short,
        subject=str(body.get("subject", "")),
        model=str(body.get("model", "")),
        model_version=version if isinstance(version, int) else None,
        dataset_version=str(body.get("dataset_version") or ""),
        summary=summary if len(summary) <= _SUMMARY_CHARS else summary[: _SUMMARY_CHARS - 1] + "…",
    )


def _summary(kind: str, body: dict[str, Any]) -> str:
    """One line per event type, naming what changed; unknown types fall back to their subject."""
    get = body.get
    version = f"{get('model')} v{get('model_version')}"
    data = str(get("dataset_version") or "")[:12]
    if kind == "data.arrived":
        return f"{get('dataset')}: {get('rows')} rows → dataset version {data}"
    if kind == "training.requested":
        return f"{get('model')}: retrain requested by {get('actor')}" + _reason(get("reason"))
    if kind == "model.trained":
        return f"{version} trained on {data} in {float(get('train_seconds') or 0):.1f} s"
    if kind == "model.version_created":
        return f"{version} registered ({get('status')})"
    if kind == "model.validated":
        gates = get("gates")
        gates = gates if isinstance(gates, list) else []
        failed = [str(g.get("name")) for g in gates if isinstance(g, dict) and not g.get("passed")]
        return f"{version} passed validation" if get("passed") else f"{version} failed {', '.join(failed)}"
    if kind == "model.version_status_changed":
        return f"{version} {get('previous_status')} → {get('status')}" + _reason(get("reason"))
    if kind == "model.promoted":
        return f"{get('model')}@{get('alias')} → v{get('model_version')} by {get('actor')}"
    if kind == "model.alias_changed":
        moved = f"v{get('previous_version')} → v{get('model_version')}"
        return f"{get('model')}@{get('alias')} {get('action')} {moved} by {get('actor')}" + _reason(
            get("reason")
        )
    if kind == "model.load_failed":
        return f"{version} failed to load: {get('reason')}"
    if kind == "drift.detected":
        return f"{get('model')} {get('kind')}: {get('summary')}"
    return str(get("subject", ""))


def _reason(reason: Any) -> str:
    return f": {reason}" if reason else ""
