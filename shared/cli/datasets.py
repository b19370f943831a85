"""`cascade datasets`: declare a dataset's schema, infer one from a file to confirm, list and show.

A schema is JSON (see services/ingest/schema.py for every field)::

    {"target": "label", "task": "classification",
     "features": [{"name": "age", "type": "integer", "min": 0, "max": 120},
                  {"name": "colour", "type": "categorical", "categories": ["red", "green"]}],
     "policy": {"missing": "impute", "impute": "median", "out_of_range": "clip"}}
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer

from cascade.cli.errors import failure_of
from cascade.errors import CascadeError

if TYPE_CHECKING:
    # The client pulls in the gRPC runtime; commands import it when they run (`--help` stays quick).
    from cascade.client.ingest import IngestClient
    from cascade.client.records import Batch, Dataset, DatasetVersion

__all__ = ["datasets_app"]

T = TypeVar("T")

datasets_app = typer.Typer(
    help="Declared datasets: typed features, target, task and cleaning policy, kept by ingest.",
    no_args_is_help=True,
)

AddressOption = Annotated[
    str | None, typer.Option(help="Ingest's gRPC address (default: this stack's).", show_default=False)
]


def _fail(message: str, exit_code: int = 1) -> NoReturn:
    typer.secho(f"Error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(exit_code)


def _address(ctx: typer.Context, address: str | None) -> str:
    if address:
        return address
    from cascade.stack import Stack, StackConfig

    config = ctx.obj if isinstance(ctx.obj, StackConfig) else StackConfig()
    return Stack(config).address("ingest")


def _call(ctx: typer.Context, address: str, calls: Callable[[IngestClient], Awaitable[T]]) -> T:
    """Make calls on ingest; a failed one ends the command with its message and exit code."""
    from cascade.cli.client import remote_service, stack_config
    from cascade.client.ingest import IngestClient

    async def run() -> T:
        async with remote_service(stack_config(ctx), "ingest", address) as service:
            return await calls(IngestClient(service))

    try:
        return asyncio.run(run())
    except CascadeError as error:
        failure = failure_of(error)
        _fail(str(failure), failure.exit_code)


@datasets_app.command("register")
def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The dataset's name.")],
    schema: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, readable=True, help="The schema, as JSON.")
    ],
    address: AddressOption = None,
) -> None:
    """Declare NAME with the schema in a JSON file; its batches are then cleaned by it."""
    try:
        data = json.loads(schema.read_text())
    except json.JSONDecodeError as error:
        _fail(f"{schema} is not a valid schema: {error}")
    if not isinstance(data, dict):
        _fail(f"{schema} is not a valid schema: a JSON object is expected")
    dataset = _call(ctx, _address(ctx, address), lambda ingest: ingest.register_dataset(name, data))
    features = len(dataset.schema.get("features", []))
    typer.echo(f"Registered dataset {dataset.dataset!r} with {features} features:")
    typer.echo(json.dumps(dataset.schema, indent=2))


@datasets_app.command("infer")
def infer(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A CSV or Parquet file.")
    ],
    target: Annotated[str, typer.Option(help="Name of the target (label) column.")] = "target",
    output: Annotated[
        Path | None, typer.Option(help="Write the schema here instead of printing it.", show_default=False)
    ] = None,
    sample_bytes: Annotated[int, typer.Option(help="How much of the file to read.")] = 8 * 1024 * 1024,
    address: AddressOption = None,
) -> None:
    """Infer a schema from FILE and print it, to check, edit and then register."""
    from cascade.cli.client import format_of

    file_format = format_of(file)
    data = file.read_bytes() if file_format.value == "parquet" else _head(file, sample_bytes)
    schema = _call(
        ctx,
        _address(ctx, address),
        lambda ingest: ingest.infer_schema(data, target=target, file_format=file_format.value),
    )
    text = json.dumps(schema, indent=2)
    if output is not None:
        output.write_text(text + "\n")
        typer.echo(f"Wrote the schema to {output}", err=True)
    else:
        typer.echo(text)
    typer.echo(
        "Check the types, add ranges and a cleaning policy, then: "
        f"cascade datasets register NAME --schema {output or 'schema.json'}",
        err=True,
    )


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}" if moment is not None else "-"


def _head(path: Path, limit: int) -> bytes:
    """The file's first `limit` bytes, cut after its last complete line."""
    with path.open("rb") as source:
        data = source.read(limit)
        if source.read(1):
            data = data[: data.rfind(b"\n") + 1]
    return data


@datasets_app.command("list")
def list_datasets(ctx: typer.Context, address: AddressOption = None) -> None:
    """List the datasets ingest knows, declared or inferred from a first batch."""
    datasets = _call(ctx, _address(ctx, address), lambda ingest: ingest.list_datasets())
    if not datasets:
        typer.echo("No datasets yet.")
        return
    typer.echo(f"{'dataset':<24} {'schema':<9} {'features':>8} {'versions':>8}  latest")
    for d in datasets:
        kind = "declared" if d.declared else "inferred"
        latest = d.head_version[:12] or "-"
        features = len(d.schema.get("features", []))
        typer.echo(f"{d.dataset:<24} {kind:<9} {features:>8} {d.versions:>8}  {latest}")


@datasets_app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The dataset's name.")],
    address: AddressOption = None,
) -> None:
    """Show a dataset's schema, its versions and its batches' reports."""

    async def read(ingest: IngestClient) -> tuple[Dataset, list[DatasetVersion], list[Batch]]:
        dataset = await ingest.get_dataset(name)
        return dataset, await ingest.list_dataset_versions(name), await ingest.list_batches(name)

    dataset, versions, batches = _call(ctx, _address(ctx, address), read)
    kind = "declared" if dataset.declared else "inferred from its first batch"
    typer.echo(f"Dataset {name!r} (schema {kind}):")
    typer.echo(json.dumps(dataset.schema, indent=2))
    typer.echo(f"Versions ({len(versions)}):")
    for v in versions:
        typer.echo(
            f"  {v.version[:12]}  {v.rows:>9} rows  {len(v.segments):>4} segments"
            f"  parent {v.parent[:12] or '-'}  {_when(v.created_at)}"
        )
    typer.echo(f"Batches ({len(batches)}):")
    for b in batches:
        r = b.report
        typer.echo(
            f"  {b.batch_id[:12]}  {r.rows_received} received, {r.rows_accepted} accepted"
            f" ({r.rows_repaired} repaired, {r.rows_flagged} flagged), {r.rows_rejected} rejected,"
            f" {r.rows_duplicate} duplicate  -> {b.version[:12] or '-'}  [{b.source}]"
        )
