"""Fuzzing the real stack: Hypothesis-generated messages on every consumed topic and requests to
every gRPC method, against the six service processes of the session's stack (tests/integration/
conftest.py), under the shared lock:

    flock /tmp/cascade-it.lock .venv/bin/pytest tests/integration/test_fuzz.py -x -q -s

The budget is fixed and the generation derandomized, so CI runs the same inputs every time:
CASCADE_FUZZ_MESSAGES (default 2000) and CASCADE_FUZZ_REQUESTS (default 2000).

Messages are the event models' own examples mutated (a field dropped, given a wrong type, a huge
string or deep nesting, an unknown field) and hostile bodies (not JSON, invalid UTF-8, empty, JSON
of the wrong shape, nested past the limit). A body over the services' 1 MiB limit cannot be sent:
the broker's own limit (message.max.bytes, 1 MiB + 12) refuses it first. Every message carries a header
with the run's id; models and datasets are named after it, so no other test's state is touched.
Requests are protobuf messages generated from each method's descriptor, every field drawn from its
type, with huge strings, extreme numbers and unknown enum values among them.

Asserted: no gRPC method answers INTERNAL or UNKNOWN; every hostile message is dead-lettered, with
a reason, by every service that consumes its topic; the services' consumer groups catch up with
everything sent (no stalled partition); every service is SERVING at the end. The counts by status
code and by dead-letter reason are printed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

# tritonclient's own stubs: other tests in this process import tritonclient, which registers the same
# proto package `inference` as cascade.stubs.inference; both in one process clash.
from tritonclient.grpc import service_pb2 as grpc_service_pb2

from cascade.cli.dlq import DeadLetter, read_dead_letters
from cascade.events import (
    DataArrived,
    DriftDetected,
    LabelsArrived,
    ModelPromoted,
    ModelTrained,
    ModelValidated,
    PredictionLogged,
    RawRecords,
    Topics,
    TrainingRequested,
)
from cascade.json_limits import JsonTooLarge, check_json_limits
from cascade.stack import SERVICES, Stack
from cascade.stubs.cascade.ingest.v1 import ingest_pb2
from cascade.stubs.cascade.monitor.v1 import monitor_pb2
from cascade.stubs.cascade.registry.v1 import registry_pb2
from cascade.stubs.cascade.trainer.v1 import trainer_pb2

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MESSAGES = int(os.environ.get("CASCADE_FUZZ_MESSAGES", "2000"))
REQUESTS = int(os.environ.get("CASCADE_FUZZ_REQUESTS", "2000"))
RUN = uuid.uuid4().hex[:10]
MARKER = "cascade_fuzz_run"  # header on every fuzz message, kept on its dead letter
# The services' defaults (cascade.settings): larger or deeper bodies are dead-lettered unparsed.
MAX_MESSAGE_BYTES, MAX_JSON_DEPTH = 1024 * 1024, 64

# Which services consume each topic, under their consumer groups "<prefix>.<service>" (serving's
# group is per replica; its progress shows in its dead letters).
CONSUMERS: dict[type[BaseModel], tuple[str, ...]] = {
    RawRecords: ("ingest",),
    DataArrived: ("trainer",),
    DriftDetected: ("trainer",),
    TrainingRequested: ("trainer",),
    ModelTrained: ("validator",),
    ModelValidated: ("registry",),
    ModelPromoted: ("monitor", "serving"),
    PredictionLogged: ("monitor",),
    LabelsArrived: ("monitor",),
}


def _examples() -> dict[type[BaseModel], BaseModel]:
    """One valid message per consumed type, about a model and dataset no other test has."""
    name = f"fuzz_{RUN}"
    common: dict[str, Any] = {"source": "cascade/fuzz", "subject": name}
    return {
        RawRecords: RawRecords(dataset=name, records=[{"a": 1.0, "target": 0}]),
        DataArrived: DataArrived(
            **common,
            dataset=name,
            dataset_version="v1",
            batch_id="b1",
            rows=1,
            target="target",
            task="classification",
        ),
        DriftDetected: DriftDetected(
            **common, model=name, model_version=1, kind="drift", summary="fuzz", report={}, action="retrain"
        ),
        TrainingRequested: TrainingRequested(**common, model=name),
        ModelTrained: ModelTrained(
            **common, model=name, model_version=1, dataset=name, dataset_version="v1", training_run="r1"
        ),
        ModelValidated: ModelValidated(**common, model=name, model_version=1, passed=True, gates=[]),
        ModelPromoted: ModelPromoted(**common, model=name, model_version=1, actor="fuzz"),
        PredictionLogged: PredictionLogged(
            **common,
            model=name,
            model_version=1,
            request_id="r1",
            features=["a"],
            inputs=[[1.0]],
            outputs=[0.0],
        ),
        LabelsArrived: LabelsArrived(model=name, request_id="r1", label=1.0),
    }


# ------------------------------------------------------------------------------------ messages

_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@dataclass(frozen=True)
class _Deep:
    """A value nested `depth` arrays deep; spliced into the body as bytes (json.dumps would recurse)."""

    depth: int


_HOSTILE_VALUES = st.one_of(
    _JSON,
    st.integers(min_value=10_000, max_value=500_000).map(lambda n: "x" * n),  # a huge string
    st.integers(min_value=MAX_JSON_DEPTH + 1, max_value=3000).map(_Deep),  # nested past the limit
)


@dataclass(frozen=True)
class Fuzzed:
    event_type: type[BaseModel]
    body: bytes
    how: str


@st.composite
def _mutated(draw: st.DrawFn, examples: dict[type[BaseModel], BaseModel]) -> Fuzzed:
    event_type = draw(st.sampled_from(sorted(examples, key=lambda t: t.__name__)))
    document: dict[str, Any] = examples[event_type].model_dump(mode="json")
    field = draw(st.sampled_from(sorted(document)))
    how = draw(st.sampled_from(["drop", "replace", "add", "keep"]))
    if how == "drop":
        del document[field]
    elif how == "replace":
        document[field] = draw(_HOSTILE_VALUES)
    elif how == "add":
        document[draw(st.text(min_size=1, max_size=12))] = draw(_HOSTILE_VALUES)
    deep = [key for key, value in document.items() if isinstance(value, _Deep)]
    body = json.dumps({key: "\0deep" if key in deep else value for key, value in document.items()}).encode()
    for key in deep:
        depth = document[key].depth
        body = body.replace(b'"\\u0000deep"', b"[" * depth + b"]" * depth, 1)
    return Fuzzed(event_type, body, f"{how} {field}")


def _hostile_bodies() -> st.SearchStrategy[tuple[bytes, str]]:
    return st.one_of(
        st.just((b"", "empty")),
        st.binary(min_size=1, max_size=200).map(lambda b: (b, "random bytes")),
        st.binary(min_size=1, max_size=40).map(
            lambda b: (b'{"model": "' + b"\xff\xfe" + b + b'"}', "invalid UTF-8")
        ),
        _JSON.filter(lambda v: not isinstance(v, dict)).map(
            lambda v: (json.dumps(v).encode(), "not an object")
        ),
        st.integers(min_value=MAX_JSON_DEPTH + 1, max_value=5000).map(
            lambda n: (b"[" * n + b"]" * n, f"nested {n} deep")
        ),
        st.text(max_size=60).map(lambda t: (("{" + t).encode(), "truncated JSON")),
    )


@st.composite
def _messages(draw: st.DrawFn, examples: dict[type[BaseModel], BaseModel]) -> Fuzzed:
    if draw(st.integers(0, 2)) < 2:
        return draw(_mutated(examples))
    event_type = draw(st.sampled_from(sorted(examples, key=lambda t: t.__name__)))
    body, how = draw(_hostile_bodies())
    return Fuzzed(event_type, body, how)


def _refused(event_type: type[BaseModel], body: bytes) -> bool:
    """Whether a consumer must refuse the body: over the limits, not JSON, or not the event."""
    try:
        check_json_limits(body, max_bytes=MAX_MESSAGE_BYTES, max_depth=MAX_JSON_DEPTH)
        event_type.model_validate(json.loads(body))
    except (JsonTooLarge, ValueError, ValidationError, RecursionError):  # UnicodeDecodeError too
        return True
    return False


def _generate(strategy: st.SearchStrategy[Any], budget: int) -> list[Any]:
    """`budget` examples of `strategy`, the same ones on every run."""
    drawn: list[Any] = []

    @settings(
        max_examples=budget,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        drawn.append(example)

    collect()
    return drawn


# ------------------------------------------------------------------------------------ requests

_SERVICES = {
    "ingest": ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
    "registry": registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    "monitor": monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"],
    "trainer": trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
    "serving": grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
}
FD = pb_descriptor.FieldDescriptor
_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
_STRINGS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "champion", "..", "../x", "a/b", "latest", "1", "-1", "{}", "[]"]),
    st.integers(min_value=1000, max_value=2_000_000).map(lambda n: "x" * n),
)


def _scalar(field: pb_descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1, -1 if low < 0 else 2]))
    if field.type == FD.TYPE_DOUBLE:
        return st.floats()
    if field.type == FD.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_STRING:
        return _STRINGS
    if field.type == FD.TYPE_BYTES:
        return st.one_of(st.binary(max_size=300), st.integers(1000, 2_000_000).map(lambda n: b"\0" * n))
    if field.type == FD.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 99))
    raise AssertionError(f"unhandled field type {field.type} of {field.full_name}")


@st.composite
def _message(draw: st.DrawFn, descriptor: pb_descriptor.Descriptor, depth: int = 0) -> Message:
    """A message of `descriptor`'s type, each field set or not, nesting at most 3 deep."""
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        target = getattr(message, field.name)
        nested = field.message_type
        if nested is not None and nested.GetOptions().map_entry:
            _fill_map(draw, target, nested, depth)
        elif nested is not None and depth < 3:
            if field.is_repeated:
                for _ in range(draw(st.integers(0, 3))):
                    target.add().CopyFrom(draw(_message(nested, depth + 1)))
            else:
                target.CopyFrom(draw(_message(nested, depth + 1)))
        elif nested is None and field.is_repeated:
            target.extend(draw(st.lists(_scalar(field), max_size=5)))
        elif nested is None:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def _fill_map(draw: st.DrawFn, target: Any, entry: pb_descriptor.Descriptor, depth: int) -> None:
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    for _ in range(draw(st.integers(0, 3))):
        key = draw(_scalar(key_field))
        if value_field.message_type is None:
            target[key] = draw(_scalar(value_field))
        elif depth < 3:
            target[key].CopyFrom(draw(_message(value_field.message_type, depth + 1)))


@dataclass(frozen=True)
class Call:
    service: str
    method: pb_descriptor.MethodDescriptor
    requests: list[Message]


@st.composite
def _calls(draw: st.DrawFn, service: str, method: pb_descriptor.MethodDescriptor) -> Call:
    count = draw(st.integers(0, 3)) if method.client_streaming else 1
    return Call(service, method, [draw(_message(method.input_type)) for _ in range(count)])


def _every_methods_calls(budget: int) -> list[Call]:
    """The budget shared out evenly over every method of every service."""
    methods = [(name, method) for name, service in sorted(_SERVICES.items()) for method in service.methods]
    return [
        call
        for number, (name, method) in enumerate(methods)
        for call in _generate(_calls(name, method), budget // len(methods) + (number < budget % len(methods)))
    ]


def _invoke(channels: dict[str, grpc.Channel], call: Call) -> grpc.StatusCode:
    channel = channels[call.service]
    path = f"/{call.method.containing_service.full_name}/{call.method.name}"
    serialize: Callable[[Message], bytes] = lambda message: message.SerializeToString()  # noqa: E731
    try:
        if call.method.client_streaming:
            channel.stream_unary(path, request_serializer=serialize)(iter(call.requests), timeout=30)
        elif call.method.server_streaming:
            for _ in channel.unary_stream(path, request_serializer=serialize)(call.requests[0], timeout=30):
                pass
        else:
            channel.unary_unary(path, request_serializer=serialize)(call.requests[0], timeout=30)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


# ------------------------------------------------------------------------------------ Kafka


async def _produce(stack: Stack, topics: Topics, fuzzed: list[Fuzzed]) -> list[tuple[Fuzzed, str, int, int]]:
    """Send every message (each with the run's marker); (message, topic, partition, offset) each."""
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.address("kafka"), max_request_size=MAX_MESSAGE_BYTES, acks="all"
    )
    await producer.start()
    try:
        pending = []
        for number, message in enumerate(fuzzed):
            topic = topics.for_event(message.event_type)  # type: ignore[arg-type]
            future = await producer.send(
                topic, message.body, key=f"fuzz-{RUN}-{number % 7}".encode(), headers=[(MARKER, RUN.encode())]
            )
            pending.append((message, topic, future))
        return [(message, topic, *_where(await future)) for message, topic, future in pending]
    finally:
        await producer.stop()


def _where(metadata: Any) -> tuple[int, int]:
    return int(metadata.partition), int(metadata.offset)


async def _lagging(stack: Stack, topics: Topics, sent: list[tuple[Fuzzed, str, int, int]]) -> list[str]:
    """Consumer groups still behind the last fuzz message of a partition they consume."""
    last: dict[tuple[str, TopicPartition], int] = {}
    for message, topic, partition, offset in sent:
        for service in CONSUMERS[message.event_type]:
            if service == "serving":
                continue
            position = (f"{topics.prefix}.{service}", TopicPartition(topic, partition))
            last[position] = max(last.get(position, -1), offset)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.address("kafka"))
    await admin.start()
    try:
        behind = []
        for group in sorted({group for group, _ in last}):
            committed = await admin.list_consumer_group_offsets(group)
            for (owner, partition), offset in last.items():
                done = committed.get(partition)
                if owner == group and (done is None or done.offset <= offset):
                    behind.append(f"{group} on {partition.topic}[{partition.partition}]")
        return behind
    finally:
        await admin.close()


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    result = check()
    while not result and time.monotonic() < deadline:
        time.sleep(1.0)
        result = check()
    return result


# ------------------------------------------------------------------------------------ the tests


def test_every_grpc_method_answers_fuzzed_requests_without_internal_errors(stack: Stack) -> None:
    calls = _every_methods_calls(REQUESTS)
    channels = {name: grpc.insecure_channel(stack.address(name)) for name in _SERVICES}
    by_status: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    try:
        for call in calls:
            code = _invoke(channels, call)
            by_status[code.name] += 1
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                shown = [str(r)[:300] for r in call.requests]
                failures.append(f"{call.service}.{call.method.name} -> {code.name}: {shown}")
    finally:
        for channel in channels.values():
            channel.close()
    methods = {(c.service, c.method.name) for c in calls}
    print(
        f"\nfuzz: {len(calls)} requests over {len(methods)} methods;"
        f" by status: {dict(by_status.most_common())}"
    )
    for failure in failures[:20]:
        print("  ", failure)
    assert len(methods) == sum(len(s.methods) for s in _SERVICES.values()), "every method was called"
    assert not failures, f"{len(failures)} requests answered INTERNAL or UNKNOWN"
    _assert_all_serving(stack)


# grpc.aio decodes a unary request before any handler runs and answers UNKNOWN when that fails;
# cascade.interceptors.RequestDecodingInterceptor turns it into INVALID_ARGUMENT (upload streams are
# refused by cascade.grpc_io.split_upload as the handler reads them).
def test_every_grpc_method_answers_bytes_that_are_not_protobuf_without_unknown(stack: Stack) -> None:
    by_status: collections.Counter[str] = collections.Counter()
    failures = []
    for name, service in sorted(_SERVICES.items()):
        with grpc.insecure_channel(stack.address(name)) as channel:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                garbage = b"\xff\xff\xff"  # wire type 7 does not exist: never a valid message
                try:
                    if method.client_streaming:
                        channel.stream_unary(path)(iter([garbage]), timeout=30)
                    elif method.server_streaming:
                        list(channel.unary_stream(path)(garbage, timeout=30))
                    else:
                        channel.unary_unary(path)(garbage, timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    assert isinstance(error, grpc.Call)
                    code = error.code()
                by_status[code.name] += 1
                if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    failures.append(f"{name}.{method.name} -> {code.name}")
    print(f"\nfuzz: undecodable requests to every method, by status: {dict(by_status)}")
    print("   INTERNAL:", [failure for failure in failures if failure.endswith("INTERNAL")])
    assert not failures, failures


def test_every_consumed_topic_dead_letters_hostile_messages_and_moves_on(stack: Stack) -> None:
    topics = Topics(stack.config.topic_prefix)
    fuzzed: list[Fuzzed] = _generate(_messages(_examples()), MESSAGES)
    sent = asyncio.run(_produce(stack, topics, fuzzed))
    hostile = {
        (topic, partition, offset): message
        for message, topic, partition, offset in sent
        if _refused(message.event_type, message.body)
    }

    caught_up = _wait(
        lambda: not asyncio.run(_lagging(stack, topics, sent)), 600, "the consumers to catch up"
    )
    assert caught_up, f"stalled: {asyncio.run(_lagging(stack, topics, sent))}"

    def letters() -> list[DeadLetter]:
        every = asyncio.run(read_dead_letters(stack.address("kafka"), topics.dead_letter))
        return [letter for letter in every if letter.headers.get(MARKER) == RUN]

    def missing(found: list[DeadLetter]) -> list[tuple[str, tuple[str, int, int]]]:
        got = {(d.service, d.source_topic, d.source_partition, d.source_offset) for d in found}
        return [
            (service, position)
            for position, message in hostile.items()
            for service in CONSUMERS[message.event_type]
            if (service, *position) not in got
        ]

    def complete() -> list[DeadLetter] | None:
        found = letters()
        return None if missing(found) else found

    found = _wait(complete, 300, "every hostile message's dead letter") or letters()
    unlettered = missing(found)
    reasons = collections.Counter(letter.reason.split(":")[0][:60] for letter in found)
    print(
        f"\nfuzz: {len(sent)} messages on {len({t for _, t, _, _ in sent})} topics, {len(hostile)} hostile; "
        f"{len(found)} dead letters, by reason: {dict(reasons.most_common(12))}"
    )
    for service, position in unlettered[:20]:
        print(
            "   not dead-lettered by", service, position, hostile[position].how, hostile[position].body[:120]
        )
    assert not unlettered, f"{len(unlettered)} hostile messages were not dead-lettered"
    assert all(letter.reason for letter in found)
    _assert_all_serving(stack)


def _assert_all_serving(stack: Stack) -> None:
    statuses = {}
    for name in SERVICES:
        with grpc.insecure_channel(stack.address(name)) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            statuses[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    assert statuses == {name: "SERVING" for name in SERVICES}
