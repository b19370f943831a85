"""The retry budget, the decoding limits and the bounded error details, fast and in memory.
tests/integration/test_delivery.py proves the same on a real broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from cascade.errors import (
    MAX_STATUS_MESSAGE_BYTES,
    InvalidArgument,
    NotFound,
    Unavailable,
    classify,
    grpc_errors,
    truncate,
)
from cascade.events import DataArrived, Topics
from cascade.json_limits import JsonTooLarge, check_json_limits, json_depth, loads_bounded
from cascade.messaging import (
    DLQ_OFFSET,
    DLQ_REASON,
    REPLAY_COUNT,
    DeadLetters,
    RetryBudget,
    build_broker,
    dead_letters_of,
    subscriber_options,
)
from cascade.settings import ServiceSettings
from tests.grpc_server import serving

HOSTILE = b"[" * 5000 + b"]" * 5000


@dataclass
class Clock:
    """Time that passes only when the code under test sleeps."""

    now: float = 0.0
    pauses: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


@dataclass
class Harness:
    dead_letters: DeadLetters
    clock: Clock
    dead: list[tuple[bytes, dict[str, str]]]


def record(offset: int = 7, headers: tuple[tuple[str, bytes], ...] = ()) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="in",
        partition=1,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=b"{}",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=2,
        headers=list(headers),
    )


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """A DeadLetters on an in-memory broker, with a clock the retries advance."""
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    broker = build_broker(ServiceSettings(topic_prefix=topics.prefix), "test")
    dead: list[tuple[bytes, dict[str, str]]] = []

    @broker.subscriber(topics.dead_letter)
    async def on_dead_letter(message: KafkaMessage) -> None:
        dead.append((message.body, {k: str(v) for k, v in message.headers.items()}))

    clock = Clock()
    built = dead_letters_of(broker)
    assert built is not None
    dead_letters = DeadLetters(
        topics.dead_letter,
        "test",
        RetryBudget(backoff_seconds=1.0, backoff_max_seconds=5.0, max_attempts=6, unknown_max_attempts=3),
        clock=clock,
        sleep=clock.sleep,
    )
    dead_letters.broker = broker
    async with TestKafkaBroker(broker):
        yield Harness(dead_letters, clock, dead)


async def test_a_transient_error_is_retried_with_capped_backoff_then_dead_lettered(harness: Harness) -> None:
    message = record()
    outcomes = [await harness.dead_letters.failed(message, Unavailable("registry down")) for _ in range(5)]
    assert outcomes == [False] * 5  # seek back and try again
    assert harness.clock.pauses == [1.0, 2.0, 4.0, 5.0, 5.0]
    (failing,) = harness.dead_letters.failing()
    assert (failing.topic, failing.partition, failing.offset, failing.attempts) == ("in", 1, 7, 5)
    assert failing.seconds == 17.0
    assert harness.dead == []

    assert await harness.dead_letters.failed(message, Unavailable("registry still down")) is True
    (body, headers), *_ = harness.dead
    assert body == b"{}"
    assert headers[DLQ_REASON] == "retries exhausted after 6 attempts: Unavailable: registry still down"
    assert headers[DLQ_OFFSET] == "7"
    assert harness.dead_letters.failing() == []


async def test_an_unclassified_error_gets_fewer_tries(harness: Harness) -> None:
    outcomes = [await harness.dead_letters.failed(record(), KeyError("features")) for _ in range(3)]
    assert outcomes == [False, False, True]
    assert harness.dead[0][1][DLQ_REASON] == "retries exhausted after 3 attempts: KeyError: 'features'"


async def test_the_seconds_budget_ends_retries_with_tries_left(harness: Harness) -> None:
    dead_letters = harness.dead_letters
    dead_letters.budget = RetryBudget(
        backoff_seconds=4.0, backoff_max_seconds=30.0, max_attempts=100, max_seconds=10.0
    )
    outcomes = [await dead_letters.failed(record(), TimeoutError("slow")) for _ in range(3)]
    # Pauses 4 and then 6 (not 8: the budget ends at 10 s), then the budget is spent.
    assert harness.clock.pauses == [4.0, 6.0]
    assert outcomes == [False, False, True]
    assert harness.dead[0][1][DLQ_REASON].startswith("retries exhausted after 3 attempts: TimeoutError")


async def test_tries_are_counted_per_position_and_forgotten_on_success(harness: Harness) -> None:
    dead_letters = harness.dead_letters
    await dead_letters.failed(record(offset=1), ConnectionError("refused"))
    await dead_letters.failed(record(offset=2), ConnectionError("refused"))
    await dead_letters.failed(record(offset=2), ConnectionError("refused"))
    assert sorted((f.offset, f.attempts) for f in dead_letters.failing()) == [(1, 1), (2, 2)]
    dead_letters.succeeded(record(offset=2))
    assert [f.offset for f in dead_letters.failing()] == [1]


async def test_permanent_errors_are_dead_lettered_at_once_with_their_replay_count(harness: Harness) -> None:
    replayed = record(headers=((REPLAY_COUNT, b"2"),))
    assert await harness.dead_letters.failed(replayed, RecursionError("maximum recursion depth")) is True
    assert harness.clock.pauses == []
    headers = harness.dead[0][1]
    assert headers[DLQ_REASON] == "RecursionError: maximum recursion depth"
    assert headers[REPLAY_COUNT] == "2"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidArgument("x"), "permanent"),
        (NotFound("x"), "permanent"),
        (ValueError("x"), "permanent"),
        (json.JSONDecodeError("x", "", 0), "permanent"),
        (RecursionError(), "permanent"),
        (MemoryError(), "permanent"),
        (Unavailable("x"), "transient"),
        (ConnectionResetError(), "transient"),
        (TimeoutError(), "transient"),
        (OSError("disk"), "transient"),
        (KeyError("x"), "unknown"),
        (AttributeError("x"), "unknown"),
        (RuntimeError("x"), "unknown"),
    ],
)
def test_classify(error: BaseException, kind: str) -> None:
    assert classify(error) == kind


def test_kafka_errors_are_transient() -> None:
    from aiokafka.errors import KafkaConnectionError, NotLeaderForPartitionError

    assert classify(KafkaConnectionError()) == "transient"
    assert classify(NotLeaderForPartitionError()) == "transient"


# ---------------------------------------------------------------------- decoding limits


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert json_depth(HOSTILE) == 5000
    assert json_depth(b'{"a": "[[[[{{", "b": [[1]], "c": "\\"[["}') == 3
    assert json_depth(b"[[1], [2], [[3]]]") == 3
    assert json_depth(b"42") == 0


def test_limits_refuse_hostile_bodies_and_accept_events() -> None:
    with pytest.raises(JsonTooLarge, match="5000 levels deep"):
        check_json_limits(HOSTILE, max_bytes=1 << 20, max_depth=64)
    with pytest.raises(JsonTooLarge, match="over the limit of 100"):
        check_json_limits(b" " * 101, max_bytes=100, max_depth=64)
    check_json_limits(b'{"a": [[[1]]], "b": "' + b"[" * 100 + b'"}', max_bytes=1 << 20, max_depth=4)
    assert classify(JsonTooLarge("x")) == "permanent"


def test_loads_bounded_turns_every_bad_body_into_invalid_argument() -> None:
    assert loads_bounded('{"a": [1]}', max_bytes=100, max_depth=2) == {"a": [1]}
    for bad in ("{not json", b"\xff\xfe", HOSTILE):
        with pytest.raises(InvalidArgument):
            loads_bounded(bad, max_bytes=1 << 20, max_depth=64)


async def test_a_hostile_body_is_dead_lettered_unparsed_and_the_next_message_handled() -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    broker = build_broker(ServiceSettings(topic_prefix=topics.prefix, max_message_bytes=64 * 1024), "test")
    handled: list[DataArrived] = []
    reasons: list[str] = []

    @broker.subscriber(topics.for_event(DataArrived), **subscriber_options("g"))
    async def on_data_arrived(event: DataArrived) -> None:
        handled.append(event)

    @broker.subscriber(topics.dead_letter)
    async def on_dead_letter(message: KafkaMessage) -> None:
        reasons.append(str(message.headers[DLQ_REASON]))

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
        await test_broker.publish(HOSTILE, topic=topics.for_event(DataArrived))
        await test_broker.publish(b"[" + b"1," * 40_000 + b"1]", topic=topics.for_event(DataArrived))
        await test_broker.publish(good, topic=topics.for_event(DataArrived))

    assert handled == [good]
    assert reasons == [
        "JsonTooLarge: JSON nested 5000 levels deep is over the limit of 64",
        "JsonTooLarge: JSON body of 80003 bytes is over the limit of 65536",
    ]


# ---------------------------------------------------------------------- gRPC error details


def test_truncate_keeps_short_text_and_cuts_long_text_on_a_character_boundary() -> None:
    assert truncate("short") == "short"
    cut = truncate("é" * 10_000)
    assert len(cut.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert cut.endswith("... (20000 bytes in all)")
    assert cut.startswith("éé")


class _Servicer:
    @grpc_errors
    async def Name(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise InvalidArgument(f"bad name {request.decode()!r}")

    @grpc_errors
    async def Crash(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise RuntimeError("secret=hunter2 " + request.decode())


async def test_a_huge_input_gets_its_status_with_a_short_message_over_real_grpc() -> None:
    servicer = _Servicer()
    handler = grpc.method_handlers_generic_handler(
        "t.T",
        {
            "Name": grpc.unary_unary_rpc_method_handler(servicer.Name),
            "Crash": grpc.unary_unary_rpc_method_handler(servicer.Crash),
        },
    )
    huge = b"n" * (10 * 1024 * 1024)

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((handler,))

    unlimited = [("grpc.max_send_message_length", -1)]
    async with serving(register) as address, grpc.aio.insecure_channel(address, options=unlimited) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary("/t.T/Name")(huge, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            await channel.unary_unary("/t.T/Crash")(huge, timeout=30)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith("bad name 'nnnn")
    assert len(details.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert crashed.value.code() == grpc.StatusCode.INTERNAL
    assert crashed.value.details() == "internal error: RuntimeError"
