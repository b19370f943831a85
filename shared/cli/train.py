"""`cascade train` (ask for a retrain, optionally following it trial by trial) and `cascade spec`
(a model's training spec, kept in versions by the registry)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from cascade.cli.client import TokenOption, remote_service
from cascade.cli.errors import EXIT_NOT_FOUND, ClientError, failure_of
from cascade.client.calls import call
from cascade.client.ingest import IngestClient
from cascade.client.records import StoredTrainingSpec
from cascade.client.registry import RegistryClient
from cascade.errors import CascadeError, NotFound
from cascade.events import Topics, TrainingProgress
from cascade.messaging import DLQ_REASON, DLQ_SERVICE
from cascade.stack import Stack, StackConfig
from cascade.stubs.cascade.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from cascade.training_spec import TrainingSpec

__all__ = ["spec_app", "train"]

spec_app = typer.Typer(help="A model's training spec: families, search, budget, folds, metric, window.")


T = TypeVar("T")
_CALL_TIMEOUT = 10.0


def _fail(error: ClientError) -> NoReturn:
    typer.secho(f"Error: {error}", err=True, fg=typer.colors.RED)
    raise typer.Exit(error.exit_code)


def _run(calls: Coroutine[Any, Any, T]) -> T:
    """Run a command's calls; a failed one ends the command with its message and exit code."""
    try:
        return asyncio.run(calls)
    except CascadeError as error:
        _fail(failure_of(error))
    except ClientError as error:
        _fail(error)


def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model to retrain, on its dataset's newest version.")],
    reason: Annotated[str, typer.Option(help="Why; kept with the new version in the registry.")] = "",
    actor: Annotated[str, typer.Option(envvar="USER", help="Who asks; kept in the registry.")] = "cli",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Print each trial until the run ends.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="With --follow, seconds to wait for the run.")] = 600.0,
) -> None:
    """Ask the trainer for a retrain now; the new version goes through validation like any other."""
    config: StackConfig = ctx.obj
    stack = Stack(config)
    address = stack.address("trainer")
    started_ms = int(time.time() * 1000)
    request = trainer_pb2.RequestTrainingRequest(model=model, actor=actor, reason=reason)
    # The trainer accepts any well-formed name and fails later, on its own, for one it cannot
    # train; asking first turns a mistyped name into an answer now (exit 3).
    _run(_require_model_or_dataset(config, model))

    async def request_training() -> trainer_pb2.RequestTrainingResponse:
        async with remote_service(config, "trainer", address) as trainer:
            stub = trainer_pb2_grpc.TrainerServiceStub(trainer.channel)
            return await call(
                trainer, f"requesting a retrain of {model}", lambda: stub.RequestTraining(request, timeout=10)
            )

    response = _run(request_training())
    typer.echo(f"Retrain of {model} requested (request {response.request_id}).")
    if follow:
        try:
            follow_run = _follow(
                stack.address("kafka"),
                Topics(config.topic_prefix),
                response.request_id,
                started_ms,
                stack.kafka_client_options(),
            )
            asyncio.run(asyncio.wait_for(follow_run, timeout))
        except ClientError as error:
            _fail(error)
        except TimeoutError:
            _fail(
                ClientError(
                    f"the run did not end within {timeout:g} s; `cascade models list` shows its result"
                )
            )


async def _require_model_or_dataset(config: StackConfig, model: str, token: str = "") -> None:
    """Fail with NOT_FOUND's exit code unless the registry knows the model or, for a model's first
    run (which trains on the dataset of its name), ingest knows that dataset."""
    try:
        async with remote_service(config, "registry", token=token) as service:
            await RegistryClient(service, timeout=_CALL_TIMEOUT).get_model(model)
            return
    except NotFound:
        pass
    try:
        async with remote_service(config, "ingest", token=token) as service:
            await IngestClient(service, timeout=_CALL_TIMEOUT).get_dataset(model)
    except NotFound:
        raise ClientError(
            f"no model or dataset named {model!r} (`cascade models list` shows the models)", EXIT_NOT_FOUND
        ) from None


async def _follow(
    bootstrap: str, topics: Topics, request_id: str, since_ms: int, kafka_options: Mapping[str, Any]
) -> None:
    """Print the run's progress events, read from the progress topic since the request was made,
    until it finishes; raise `ClientError` when it fails. The trainer reports a run that fails as
    a `failed` progress event, but a request it cannot even start (a dataset with no versions)
    goes to the dead-letter topic with the reason, so that topic is watched for the request too."""
    progress_topic = topics.for_event(TrainingProgress)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **kafka_options
    )
    await consumer.start()
    try:
        assigned = await _partitions(bootstrap, progress_topic, kafka_options)
        consumer.assign(assigned)
        await _seek_to_time(consumer, assigned, since_ms)
        dead_letters_assigned = False
        while True:
            if not dead_letters_assigned:
                # The dead-letter topic exists from the first dead letter on; look again each round.
                dead_letters = await _partitions(bootstrap, topics.dead_letter, kafka_options, wait=False)
                if dead_letters:
                    # assign() replaces the assignment and forgets every position: the progress
                    # partitions would jump to their end and miss what was not read yet.
                    positions = {tp: await consumer.position(tp) for tp in assigned}
                    assigned += dead_letters
                    consumer.assign(assigned)
                    for tp, offset in positions.items():
                        consumer.seek(tp, offset)
                    await _seek_to_time(consumer, dead_letters, since_ms)
                    dead_letters_assigned = True
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    if record.topic == topics.dead_letter:
                        _raise_if_refused(record, request_id)
                    elif _report_progress(record.value or b"", request_id):
                        return
    finally:
        await consumer.stop()


def _report_progress(value: bytes, request_id: str) -> bool:
    """Print a progress event of this request's run; True once the run finished."""
    try:
        event = TrainingProgress.model_validate_json(value)
    except ValidationError:
        return False
    if not event.run_key.endswith(request_id):
        return False
    typer.echo(_describe(event))
    if event.stage == "failed":
        raise ClientError(f"the run failed: {event.message}")
    return event.stage == "finished"


def _raise_if_refused(record: Any, request_id: str) -> None:
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
    raise ClientError(f"{service} refused the request: {reason}")


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


def _describe(event: TrainingProgress) -> str:
    if event.stage == "trial":
        score = "-" if event.score is None else f"{event.score:.4f}"
        best = "-" if event.best_score is None else f"{event.best_score:.4f}"
        return (
            f"  trial {event.trial}/{event.max_trials} {event.estimator}: {event.state} {score} (best {best})"
        )
    return f"{event.stage}: {event.message}"


@spec_app.command("show")
def show_spec(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Option(help="Spec version; 0 is the latest.")] = 0,
    token: TokenOption = "",
) -> None:
    """Print a model's spec (the defaults apply when it has none)."""
    config: StackConfig = ctx.obj

    async def read() -> StoredTrainingSpec | None:
        try:
            async with remote_service(config, "registry", token=token) as service:
                return await RegistryClient(service, timeout=_CALL_TIMEOUT).get_training_spec(model, version)
        except NotFound:
            if version:
                raise
        await _require_model_or_dataset(config, model, token)
        return None

    stored = _run(read())
    if stored is None:
        typer.echo(f"# {model} has no spec; these defaults apply (the task comes from the dataset)")
        typer.echo(TrainingSpec().model_dump_json(indent=2))
        return
    typer.echo(f"# {model} spec version {stored.version}, set by {stored.actor}")
    typer.echo(json.dumps(json.loads(stored.spec_json), indent=2))


@spec_app.command("set")
def set_spec(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    path: Annotated[
        Path, typer.Argument(help="A JSON file with the spec's fields (the rest keep defaults).")
    ],
    actor: Annotated[str, typer.Option(envvar="USER", help="Who; kept with the spec version.")] = "cli",
    token: TokenOption = "",
) -> None:
    """Store a new version of a model's spec; the next run uses it."""
    try:
        spec = TrainingSpec.model_validate_json(path.read_text())
    except (OSError, ValidationError) as error:
        _fail(ClientError(f"{path} is not a valid training spec: {error}"))
    config: StackConfig = ctx.obj

    async def store() -> StoredTrainingSpec:
        async with remote_service(config, "registry", token=token) as service:
            registry = RegistryClient(service, timeout=_CALL_TIMEOUT)
            return await registry.set_training_spec(model, spec.model_dump_json(), actor)

    stored = _run(store())
    typer.echo(f"{model} spec version {stored.version} stored; the next run uses it.")
