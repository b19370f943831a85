"""Following a cascade to its outcome, for `cascade ingest --follow` and `cascade train --follow`:
the trainer's run (read from the progress topic, and the dead-letter topic for a refused request),
then the version it registered through validation and promotion to serving.

Each stage prints one line as it is reached; the end is either a `Served` outcome, a `Reproduced`
one (the run made no new version), a `Challenger` one (manual policy: awaiting a person's approval), or a
`CascadeFailed` error that says at which stage and why, with the exit code the command ends with.
The registry and serving are read through the SDK's typed clients (`cascade.client.sdk.AsyncClient`),
polled as `AsyncClient.follow` polls them, so that each stage can be reported as it is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from cascade.cli.client import security_of
from cascade.cli.errors import EXIT_FAILURE, EXIT_TIMEOUT, EXIT_UNAVAILABLE, EXIT_USAGE, ClientError
from cascade.client.records import ModelVersion, VersionStatus
from cascade.client.sdk import LOCAL_PORTS, AsyncClient
from cascade.errors import NotFound
from cascade.events import Topics, TrainingProgress
from cascade.messaging import DLQ_REASON, DLQ_SERVICE
from cascade.stack import Stack, StackConfig

__all__ = [
    "CascadeFailed",
    "Challenger",
    "Deadline",
    "Reproduced",
    "Served",
    "describe_progress",
    "follow_training",
    "follow_upload",
    "follow_version",
    "key_metric",
    "outcome_lines",
    "raise_if_refused",
    "report_progress",
    "sdk_client",
    "validation_failure",
    "watch_run",
]

Echo = Callable[[str], None]
_POLL_SECONDS = 0.5
_CALL_TIMEOUT = 10.0


class CascadeFailed(ClientError):
    """The cascade ended without serving: the message names the stage and the reason."""


@dataclass(frozen=True)
class Served:
    version: ModelVersion


@dataclass(frozen=True)
class Challenger:
    """Passed validation and became challenger: under the manual policy awaiting the approval of
    someone who manages the model (`cascade models approve`), under the progressive one rolling out
    on live traffic."""

    version: ModelVersion


@dataclass(frozen=True)
class Reproduced:
    """The run's artifact was an existing version's byte for byte: no new version to follow."""

    version: ModelVersion


class Deadline:
    """When following gives up; its error says what was awaited, with the timeout's exit code."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._ends - time.monotonic())

    def check(self, waiting_for: str) -> None:
        if time.monotonic() >= self._ends:
            raise CascadeFailed(
                f"no outcome within {self.seconds:g} s (waiting for {waiting_for}); "
                "`cascade models show` tells it later",
                EXIT_TIMEOUT,
            )


def sdk_client(config: StackConfig, token: str = "") -> AsyncClient:
    """The SDK's client for the stack the command talks to, with the CLI's credentials. Build it
    inside the event loop that uses it (its gRPC channels belong to that loop)."""
    stack = Stack(config)
    addresses = {name: stack.address(name) for name in LOCAL_PORTS}
    return AsyncClient(addresses, security=security_of(config, token), timeout=_CALL_TIMEOUT)


# ---------------------------------------------------------------------- the trainer's run


async def watch_run(
    stack: Stack,
    is_ours: Callable[[TrainingProgress], bool],
    since_ms: int,
    echo: Echo,
    request_id: str = "",
) -> TrainingProgress:
    """Print the progress events of the run `is_ours` picks, read from the progress topic since
    `since_ms`, and return its `finished` event; raise `CascadeFailed` when it fails. The trainer
    reports a run that fails as a `failed` progress event, but a request it cannot even start (a
    dataset with no versions) goes to the dead-letter topic with the reason, so with a
    `request_id` that topic is watched for the request too."""
    bootstrap, topics, options = (
        stack.address("kafka"),
        Topics(stack.config.topic_prefix),
        stack.kafka_client_options(),
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options
    )
    try:
        await consumer.start()
    except KafkaError as error:
        raise CascadeFailed(
            f"cannot read the trainer's progress from Kafka at {bootstrap} ({error}). Is the stack up?",
            EXIT_UNAVAILABLE,
        ) from None
    try:
        assigned = await _partitions(bootstrap, topics.for_event(TrainingProgress), options)
        consumer.assign(assigned)
        await _seek_to_time(consumer, assigned, since_ms)
        watching_dead_letters = not request_id
        while True:
            if not watching_dead_letters:
                # The dead-letter topic exists from the first dead letter on; look again each round.
                dead_letters = await _partitions(bootstrap, topics.dead_letter, options, wait=False)
                if dead_letters:
                    # assign() replaces the assignment and forgets every position: the progress
                    # partitions would jump to their end and miss what was not read yet.
                    positions = {tp: await consumer.position(tp) for tp in assigned}
                    assigned += dead_letters
                    consumer.assign(assigned)
                    for tp, offset in positions.items():
                        consumer.seek(tp, offset)
                    await _seek_to_time(consumer, dead_letters, since_ms)
                    watching_dead_letters = True
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    if record.topic == topics.dead_letter:
                        raise_if_refused(record, request_id)
                        continue
                    finished = report_progress(record.value or b"", is_ours, echo)
                    if finished is not None:
                        return finished
    finally:
        await consumer.stop()


def report_progress(
    value: bytes, is_ours: Callable[[TrainingProgress], bool], echo: Echo
) -> TrainingProgress | None:
    """Print a progress event of the run followed; the event once the run finished. A failed run
    raises `CascadeFailed` with the trainer's reason."""
    try:
        event = TrainingProgress.model_validate_json(value)
    except ValidationError:
        return None
    if not is_ours(event):
        return None
    echo(describe_progress(event))
    if event.stage == "failed":
        raise CascadeFailed(f"training {event.model} failed: {event.message}", EXIT_FAILURE)
    return event if event.stage == "finished" else None


def raise_if_refused(record: Any, request_id: str) -> None:
    """A dead letter holding the training request itself: the trainer refused it."""
    try:
        dead = json.loads(record.value or b"")
    except ValueError:
        return
    if not isinstance(dead, dict) or dead.get("id") != request_id:
        return
    headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
    service = headers.get(DLQ_SERVICE, "the trainer")
    reason = headers.get(DLQ_REASON, "no reason given")
    raise CascadeFailed(f"{service} refused the request: {reason}", EXIT_FAILURE)


def describe_progress(event: TrainingProgress) -> str:
    if event.stage == "trial":
        score = "-" if event.score is None else f"{event.score:.4f}"
        best = "-" if event.best_score is None else f"{event.best_score:.4f}"
        return (
            f"  trial {event.trial}/{event.max_trials} {event.estimator}: {event.state} {score} (best {best})"
        )
    return f"{event.stage}: {event.message}"


async def _seek_to_time(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], since_ms: int) -> None:
    offsets = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
    for partition in partitions:
        found = offsets.get(partition)
        if found is None:
            await consumer.seek_to_end(partition)
        else:
            consumer.seek(partition, found.offset)


async def _partitions(
    bootstrap: str, topic: str, kafka_options: Mapping[str, Any], *, wait: bool = True
) -> list[TopicPartition]:
    """The topic's partitions, waiting for it to exist (the first run of a stack creates it)
    unless told not to wait: then none while it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_options)
    await admin.start()
    try:
        while True:
            (described,) = await admin.describe_topics([topic])
            if not described.get("error_code") and described.get("partitions"):
                numbers = sorted(p["partition"] for p in described["partitions"])
                return [TopicPartition(topic, number) for number in numbers]
            if not wait:
                return []
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


# ---------------------------------------------------------------------- the version


async def follow_version(
    client: AsyncClient, model: str, number: int, deadline: Deadline, echo: Echo, *, run_key: str = ""
) -> Served | Challenger | Reproduced:
    """Follow version `number` of `model` through validation and promotion until serving answers
    with it, printing each stage once. With the `run_key` of the run that produced it, a version
    that run did not register (it reproduced that version byte for byte) is `Reproduced`.
    `CascadeFailed` (EXIT_USAGE, as FAILED_PRECONDITION) when it failed validation."""
    version = await client.registry.get_version(model, number)
    if run_key and version.idempotency_key != run_key:
        return Reproduced(version)
    reported: set[str] = set()

    def stage(name: str, line: str) -> None:
        if name not in reported:
            reported.add(name)
            echo(line)

    stage("trained", f"  trained v{number}" + _trained(version))
    while True:
        if version.status is VersionStatus.failed:
            stage("validated", f"  validated v{number}: FAILED")
            for gate in version.failed_gates:
                echo(f"    {gate.describe()}")
            raise validation_failure(version)
        waiting_for = f"the validator's verdict on {model} v{number}"
        if version.status is VersionStatus.ready:
            stage("validated", f"  validated v{number}: passed ({len(version.gates)} gates)")
            waiting_for = f"{model} v{number} to be promoted"
            if "champion" in version.aliases:
                stage("promoted", f"  promoted v{number} to champion")
                waiting_for = f"serving to load {model} v{number}"
                if await _serving(client, model, number):
                    stage("serving", f"  serving v{number}")
                    return Served(version)
            elif _rolling_out(version):
                stage(
                    "awaiting", f"  rolling out: v{number} is challenger on live traffic (progressive policy)"
                )
                return Challenger(version)
            elif "challenger" in version.aliases:
                stage("awaiting", f"  awaiting approval: v{number} is challenger (manual promotion policy)")
                return Challenger(version)
        deadline.check(waiting_for)
        await asyncio.sleep(_POLL_SECONDS)
        version = await client.registry.get_version(model, number)


def _rolling_out(version: ModelVersion) -> bool:
    """On live traffic beside the champion: a rollout (progressive policy) made it shadow or canary."""
    return "challenger" in version.aliases and bool({"canary", "shadow"} & set(version.aliases))


def validation_failure(version: ModelVersion) -> CascadeFailed:
    """The one-line error of a version that failed validation: which gates, value and threshold."""
    gates = "; ".join(gate.describe() for gate in version.failed_gates) or "see `cascade models show`"
    return CascadeFailed(f"{version.model} v{version.version} failed validation: {gates}", EXIT_USAGE)


def key_metric(version: ModelVersion) -> str:
    """The run's headline metric, `holdout_accuracy=0.95` (held-out, else cross-validated), or ''."""
    metrics = version.run.metrics
    for prefix in ("holdout_", "cv_", ""):
        for name in sorted(metrics):
            if name.startswith(prefix):
                return f"{name}={metrics[name]:.4g}"
    return ""


def _trained(version: ModelVersion) -> str:
    metric = key_metric(version)
    details = [
        part for part in (metric, f"{version.run.train_seconds:.1f} s" if version.run.run_id else "") if part
    ]
    return f" ({', '.join(details)})" if details else ""


async def _serving(client: AsyncClient, model: str, number: int) -> bool:
    try:
        return await client.serving.model_ready(model, str(number))
    except NotFound:
        return False


# ---------------------------------------------------------------------- whole cascades

Outcome = Served | Challenger | Reproduced | None


async def follow_upload(
    stack: Stack, model: str, dataset_version: str, since_ms: int, deadline: Deadline, echo: Echo
) -> Outcome:
    """Follow the cascade an upload started: the run training `model` on `dataset_version`, then
    the version it registered. The registry is asked too, so a version whose progress events were
    missed (they are best effort) is still found."""
    ours = f"{dataset_version}:"

    def is_ours(event: TrainingProgress) -> bool:
        return event.model == model and event.run_key.startswith(ours)

    def stages_only(line: str) -> None:  # an upload's outcome needs no trial-by-trial lines
        if line.startswith("started: "):
            echo(f"  training: {line.removeprefix('started: ')}")

    async with sdk_client(stack.config) as client:
        watcher = asyncio.create_task(watch_run(stack, is_ours, since_ms, stages_only))
        try:
            number, run_key = await _trained_version(client, watcher, model, dataset_version, deadline, echo)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        return await follow_version(client, model, number, deadline, echo, run_key=run_key)


async def _trained_version(
    client: AsyncClient,
    watcher: asyncio.Task[TrainingProgress],
    model: str,
    dataset_version: str,
    deadline: Deadline,
    echo: Echo,
) -> tuple[int, str]:
    """(number, run key) of the version the run registers: from its `finished` event, or from the
    registry (run key unknown then); the watcher's `CascadeFailed` ends it."""
    warned = False
    while True:
        if watcher.done() and not warned:
            try:
                finished = watcher.result()
            except CascadeFailed as error:
                if error.exit_code != EXIT_UNAVAILABLE:
                    raise
                echo(f"  (no training progress: {error}; asking the registry only)")
                warned = True
            else:
                if finished.model_version is not None:
                    return finished.model_version, finished.run_key
                warned = True
        try:
            trained = await client.registry.list_versions(model, dataset_version=dataset_version)
        except NotFound:  # the model appears with its first version
            trained = []
        if trained:
            return trained[-1].version, ""
        deadline.check(f"a version of {model} trained on {dataset_version[:12]}")
        await asyncio.sleep(_POLL_SECONDS)


async def follow_training(
    stack: Stack, model: str, request_id: str, since_ms: int, deadline: Deadline, echo: Echo
) -> Outcome:
    """Follow a requested retrain trial by trial, then the version it registered (None when the
    run reported no version)."""

    def is_ours(event: TrainingProgress) -> bool:
        return event.run_key.endswith(request_id)

    try:
        finished = await asyncio.wait_for(
            watch_run(stack, is_ours, since_ms, echo, request_id), deadline.remaining()
        )
    except TimeoutError:
        deadline.check("the trainer's run to end")
        raise
    if finished.model_version is None:
        return None
    async with sdk_client(stack.config) as client:
        return await follow_version(
            client, model, finished.model_version, deadline, echo, run_key=finished.run_key
        )


def outcome_lines(model: str, outcome: Outcome, seconds: float) -> list[str]:
    """What a followed cascade came to, for a person."""
    if isinstance(outcome, Served):
        return [f"Served {model} v{outcome.version.version} after {seconds:.1f} s."]
    if isinstance(outcome, Challenger) and _rolling_out(outcome.version):
        number = outcome.version.version
        return [
            f"{model} v{number} passed validation and is rolling out on live traffic (progressive "
            f"promotion policy); `cascade models traffic {model}` shows its step, the monitor promotes it."
        ]
    if isinstance(outcome, Challenger):
        number = outcome.version.version
        return [
            f"{model} v{number} passed validation and is challenger, awaiting approval (manual "
            f"promotion policy); `cascade models approve {model} {number} --reason ...` serves it."
        ]
    if isinstance(outcome, Reproduced):
        number = outcome.version.version
        return [f"No new version: the run reproduced {model} v{number} byte for byte; v{number} stays."]
    return ["The run ended without a version to follow."]
