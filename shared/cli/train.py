"""`cascade train` (ask for a retrain, optionally following it trial by trial and then its version
to serving or to the stage it failed at) and `cascade spec`
(a model's training spec, kept in versions by the registry)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from cascade.cli.client import TokenOption, remote_service
from cascade.cli.errors import EXIT_NOT_FOUND, ClientError, failure_of
from cascade.cli.follow import Deadline, follow_training, outcome_lines
from cascade.client.calls import call
from cascade.client.ingest import IngestClient
from cascade.client.records import StoredTrainingSpec
from cascade.client.registry import RegistryClient
from cascade.errors import CascadeError, NotFound
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
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Print each trial, then follow the version the run registers through validation and "
            "promotion to serving; exit non-zero (see the exit codes) when the request is refused, the "
            "run fails or the version fails validation.",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --follow, seconds to wait for the whole cascade.")
    ] = 600.0,
) -> None:
    """Ask the trainer for a retrain now; the new version goes through validation like any other."""
    config: StackConfig = ctx.obj
    stack = Stack(config)
    address = stack.address("trainer")
    started, started_ms = time.monotonic(), int(time.time() * 1000)
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
    if not follow:
        return
    deadline = Deadline(timeout)
    outcome = _run(follow_training(stack, model, response.request_id, started_ms, deadline, typer.echo))
    for line in outcome_lines(model, outcome, time.monotonic() - started):
        typer.echo(line)


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
