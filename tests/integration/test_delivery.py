"""Delivery that never stalls, on a real Kafka broker started by the project's launcher: poison
messages end in the dead-letter topic within the retry budget and the partition moves on; health
shows a consumer stuck on a message; `cascade dlq replay` puts a fixed message back, handled once.

Each test runs a small FastStream app built with cascade.messaging.build_broker (the same broker
every service uses) in this process, on its own source topic and consumer group; the dead-letter
topic is shared, so each test reads only the letters from its own topic. Run under the lock:

    flock /tmp/cascade-it.lock .venv/bin/pytest tests/integration/test_delivery.py -x -q
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from cascade.cli.dlq import DeadLetter, read_dead_letters
from cascade.cli.main import app
from cascade.errors import InvalidArgument, Unavailable
from cascade.events import Topics
from cascade.messaging import REPLAY_COUNT, REPLAYED_FROM, build_broker, subscriber_options
from cascade.service import Service
from cascade.settings import ServiceSettings
from cascade.stack import Stack, StackConfig

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PREFIX = "dlv"
KAFKA_PORT = 22092
HOSTILE = b"[" * 5000 + b"]" * 5000
T = TypeVar("T")


@pytest.fixture(scope="module")
def kafka() -> Iterator[Stack]:
    """One broker alone (no services), in a home of its own that `cascade --home` finds."""
    home = Path(tempfile.mkdtemp(prefix="cascade-delivery-"))
    stack = Stack(
        StackConfig(home=home, kafka_port=KAFKA_PORT, controller_port=KAFKA_PORT + 1, topic_prefix=PREFIX)
    )
    try:
        stack.start_kafka(timeout=120)
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


def settings(stack: Stack, **overrides: Any) -> ServiceSettings:
    return ServiceSettings(kafka_bootstrap=stack.address("kafka"), topic_prefix=PREFIX, **overrides)


async def produce(stack: Stack, topic: str, *bodies: bytes) -> None:
    """Raw bytes, all with one key: one partition, in this order."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.address("kafka"), acks="all")
    await producer.start()
    try:
        for body in bodies:
            await producer.send_and_wait(topic, body, key=b"one-partition")
    finally:
        await producer.stop()


async def eventually(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """The first true result of `check`, polled; a test failure after a minute without one."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after 60 s waiting for {what}")


async def letters_from(stack: Stack, topic: str, count: int) -> list[DeadLetter]:
    async def read() -> list[DeadLetter] | None:
        letters = await read_dead_letters(stack.address("kafka"), Topics(PREFIX).dead_letter)
        mine = [letter for letter in letters if letter.source_topic == topic]
        return mine if len(mine) >= count else None

    return await eventually(read, f"{count} dead letter(s) from {topic}")


@asynccontextmanager
async def running(broker: KafkaBroker) -> AsyncIterator[None]:
    await broker.start()
    try:
        yield
    finally:
        await broker.stop()


@dataclass
class Topic:
    name: str
    group: str


def fresh_topic() -> Topic:
    suffix = uuid.uuid4().hex[:8]
    return Topic(f"{PREFIX}.delivery-{suffix}", f"{PREFIX}.test-{suffix}")


async def test_poison_messages_are_dead_lettered_within_the_budget_and_the_partition_moves_on(
    kafka: Stack,
) -> None:
    topic = fresh_topic()
    broker = build_broker(
        settings(kafka, retry_backoff_seconds=0.2, retry_max_attempts=5, retry_unknown_max_attempts=3),
        "delivery",
    )
    handled: list[dict[str, Any]] = []

    @broker.subscriber(topic.name, **subscriber_options(topic.group))
    async def handle(body: dict[str, Any]) -> None:
        if body.get("kind") == "no-features":
            raise KeyError("features")  # what the validator raised for a version without a tag
        handled.append(body)

    async with running(broker):
        await produce(kafka, topic.name, HOSTILE, b'{"kind": "no-features"}', b'{"kind": "fine", "n": 1}')
        await eventually(lambda: _ready(handled), "the message behind the poison to be handled")
        letters = await letters_from(kafka, topic.name, 2)

    assert handled == [{"kind": "fine", "n": 1}]
    by_offset = sorted(letters, key=lambda letter: letter.source_offset or 0)
    assert [letter.reason for letter in by_offset] == [
        "JsonTooLarge: JSON nested 5000 levels deep is over the limit of 64",
        "retries exhausted after 3 attempts: KeyError: 'features'",
    ]
    assert by_offset[0].value == HOSTILE  # the exact bytes, for inspection and replay
    assert {letter.service for letter in letters} == {"delivery"}


async def _ready(items: list[T]) -> list[T] | None:
    return items or None


async def test_health_is_degraded_while_a_message_is_retried_and_not_serving_past_the_threshold(
    kafka: Stack,
) -> None:
    topic = fresh_topic()
    service_settings = settings(
        kafka,
        retry_backoff_seconds=0.5,
        retry_backoff_max_seconds=0.5,
        retry_max_attempts=1000,
        retry_max_seconds=8.0,
        degraded_not_serving_seconds=3.0,
    )
    broker = build_broker(service_settings, "stuck")
    handled: list[dict[str, Any]] = []

    @broker.subscriber(topic.name, **subscriber_options(topic.group))
    async def handle(body: dict[str, Any]) -> None:
        if body["kind"] == "registry-down":
            raise Unavailable("the registry is down")
        handled.append(body)

    service = Service("stuck", service_settings, broker=broker, watch_interval_seconds=0.2)
    stop = asyncio.Event()
    runner = asyncio.create_task(service.run(stop))
    seen: list[tuple[str, bool]] = []  # (health, degraded) each time it changed
    try:
        await eventually(lambda: _bound(service), "the gRPC server")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.bound_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def observe() -> bool:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                state = (
                    health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status),
                    bool(service.degraded_reason),
                )
                if not seen or seen[-1] != state:
                    seen.append(state)
                return bool(handled)

            await eventually(lambda: _serving(health), "the service to be SERVING")
            await produce(kafka, topic.name, b'{"kind": "registry-down"}', b'{"kind": "fine"}')
            await eventually(observe, "the message behind the stuck one to be handled")
            await eventually(lambda: _serving(health), "health SERVING again")
        letters = await letters_from(kafka, topic.name, 1)
    finally:
        stop.set()
        await runner

    assert seen[0] == ("SERVING", False)
    # Degraded but serving while retried, then NOT_SERVING past 3 s, until it was dead-lettered.
    assert ("SERVING", True) in seen
    assert ("NOT_SERVING", True) in seen
    assert seen.index(("SERVING", True)) < seen.index(("NOT_SERVING", True))
    assert letters[0].reason.startswith("retries exhausted after ")
    assert letters[0].reason.endswith(" attempts: Unavailable: the registry is down")
    assert service.degraded_reason == ""
    assert REGISTRY.get_sample_value("cascade_service_degraded", {"service": "stuck"}) == 0
    retries = REGISTRY.get_sample_value(
        "cascade_message_retries_total", {"service": "stuck", "topic": topic.name}
    )
    assert retries is not None and retries >= 3
    # Both messages were consumed from their partition: no lag left there.
    partition = str(letters[0].source_partition)
    lag = {"service": "stuck", "topic": topic.name, "partition": partition}
    assert REGISTRY.get_sample_value("cascade_consumer_lag", lag) == 0


async def _bound(service: Service) -> bool:
    return service.bound_port != 0


async def _serving(health: health_pb2_grpc.HealthStub) -> bool:
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


async def test_a_replayed_message_fails_again_with_its_count_then_once_fixed_is_handled_once(
    kafka: Stack,
) -> None:
    topic = fresh_topic()
    broker = build_broker(settings(kafka), "replayed")
    fixed = False
    handled: list[tuple[dict[str, Any], dict[str, str]]] = []

    @broker.subscriber(topic.name, **subscriber_options(topic.group))
    async def handle(message: KafkaMessage) -> None:
        body = json.loads(message.body)
        if not fixed:
            raise InvalidArgument("unknown model 'churn'")  # until the operator registers it
        handled.append((body, {name: str(value) for name, value in message.headers.items()}))

    def cascade(*args: str) -> Any:
        return CliRunner().invoke(app, ["--home", str(kafka.home), "dlq", *args])

    async with running(broker):
        await produce(kafka, topic.name, b'{"model": "churn"}')
        (first,) = await letters_from(kafka, topic.name, 1)
        assert first.reason == "InvalidArgument: unknown model 'churn'"

        listed = await asyncio.to_thread(cascade, "list", "--topic", topic.name, "--json")
        assert listed.exit_code == 0, listed.output
        assert [row["ref"] for row in json.loads(listed.output)] == [first.ref]
        shown = await asyncio.to_thread(cascade, "show", first.ref)
        assert shown.exit_code == 0, shown.output
        assert "unknown model 'churn'" in shown.output and '{"model": "churn"}' in shown.output

        # Replayed before the fix: it fails again and comes back with its replay count.
        replayed = await asyncio.to_thread(cascade, "replay", first.ref)
        assert replayed.exit_code == 0, replayed.output
        assert (
            f"replayed {Topics(PREFIX).dead_letter}:{first.ref} to {topic.name} (replay 1)" in replayed.output
        )
        letters = await letters_from(kafka, topic.name, 2)
        (second,) = [letter for letter in letters if letter.ref != first.ref]
        assert second.replay_count == 1
        assert second.replayed_from == f"{Topics(PREFIX).dead_letter}:{first.ref}"

        # The same letter again is refused: it was replayed already.
        again = await asyncio.to_thread(cascade, "replay", first.ref)
        assert again.exit_code == 1
        assert "replayed before" in again.output

        fixed = True
        done = await asyncio.to_thread(cascade, "replay", second.ref, "--json")
        assert done.exit_code == 0, done.output
        assert json.loads(done.output) == [
            {"letter": second.ref, "topic": topic.name, "replay_count": 2, "replayed": True, "why_not": ""}
        ]
        await eventually(lambda: _ready(handled), "the fixed message to be handled")
        # A later message on the topic is handled after it: the replay was handled once, no more.
        await produce(kafka, topic.name, b'{"model": "after"}')
        await eventually(
            lambda: _ready([body for body, _ in handled if body["model"] == "after"]), "a later message"
        )

    assert [body for body, _ in handled] == [{"model": "churn"}, {"model": "after"}]
    headers = handled[0][1]
    assert headers[REPLAYED_FROM] == f"{Topics(PREFIX).dead_letter}:{second.ref}"
    assert headers[REPLAY_COUNT] == "2"
    assert not any(name.startswith("cascade_dlq_") for name in headers)
    audit = (kafka.home / "logs" / "dlq-replays.log").read_text().splitlines()
    assert [json.loads(line)["replayed_from"] for line in audit][-2:] == [
        f"{Topics(PREFIX).dead_letter}:{first.ref}",
        f"{Topics(PREFIX).dead_letter}:{second.ref}",
    ]


async def test_status_shows_each_services_lag_and_dead_letters(kafka: Stack) -> None:
    suffix = uuid.uuid4().hex[:8]
    # The consumer group and service name of a stack's validator, so that status reports it there.
    topic = Topic(f"{PREFIX}.status-{suffix}", f"{PREFIX}.validator")
    broker = build_broker(settings(kafka), "validator")
    handled: list[dict[str, Any]] = []

    @broker.subscriber(topic.name, **subscriber_options(topic.group))
    async def handle(body: dict[str, Any]) -> None:
        handled.append(body)

    async with running(broker):
        await produce(kafka, topic.name, HOSTILE, b'{"n": 1}')
        await eventually(lambda: _ready(handled), "the message after the poison")
        await letters_from(kafka, topic.name, 1)
    # Arrived while no validator runs: lag.
    await produce(kafka, topic.name, b'{"n": 2}', b'{"n": 3}', b'{"n": 4}')

    def status(*args: str) -> Any:
        return CliRunner().invoke(app, ["--home", str(kafka.home), "status", *args])

    as_json = await asyncio.to_thread(status, "--json")
    assert as_json.exit_code == 0, as_json.output
    (validator,) = [row for row in json.loads(as_json.output) if row["name"] == "validator"]
    assert validator["lag"][topic.name] == 3
    assert validator["dead_letters"][topic.name] == 1
    table = await asyncio.to_thread(status)
    assert table.exit_code == 0, table.output
    (line,) = [line for line in table.output.splitlines() if topic.name in line]
    assert line.split() == ["validator", topic.name, "3", "1"]
