"""`cascade models`: the registry's versions, aliases, lineage and audit history, as tables or JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf.json_format import MessageToDict

from shared.cli.client import describe_rpc_error
from shared.cli.errors import ClientError
from shared.cli.stack import Stack, StackConfig
from shared.stubs.cascade.registry.v1 import registry_pb2 as pb
from shared.stubs.cascade.registry.v1 import registry_pb2_grpc

__all__ = ["models_app"]

models_app = typer.Typer(
    help="Model versions in the registry: list, show, promote, roll back, lineage and alias history.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
T = TypeVar("T")
_REFERENCE = re.compile(r"^(?P<model>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))?$")
_STATUS = {
    pb.VERSION_STATUS_PENDING: "pending",
    pb.VERSION_STATUS_READY: "ready",
    pb.VERSION_STATUS_FAILED: "failed",
}


@contextmanager
def _registry(ctx: typer.Context) -> Iterator[tuple[registry_pb2_grpc.RegistryServiceStub, str]]:
    config: StackConfig = ctx.obj
    address = Stack(config).address("registry")
    with grpc.insecure_channel(address) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel), address


def _call(ctx: typer.Context, call: Callable[[registry_pb2_grpc.RegistryServiceStub], T]) -> T:
    with _registry(ctx) as (stub, address):
        try:
            return call(stub)
        except grpc.RpcError as error:
            raise ClientError(describe_rpc_error("registry", address, error)) from error


def _fail(error: ClientError) -> None:
    typer.secho(f"Error: {error}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


def _as_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    return result


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    typer.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _selector(reference: str) -> pb.GetModelVersionRequest:
    """NAME (champion), NAME@ALIAS or NAME/VERSION, as MLflow users write them."""
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        raise ClientError(f"not a model reference: {reference!r} (use NAME, NAME@ALIAS or NAME/VERSION)")
    if match["version"]:
        return pb.GetModelVersionRequest(model=match["model"], version=int(match["version"]))
    return pb.GetModelVersionRequest(model=match["model"], alias=match["alias"] or "champion")


@models_app.command("list")
def list_models(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every model with its latest version and aliases."""
    try:
        models = _call(ctx, lambda stub: stub.ListModels(pb.ListModelsRequest(), timeout=10)).models
    except ClientError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps([_as_dict(m) for m in models], indent=2))
        return
    _table(
        ["model", "latest", "champion", "challenger", "other aliases"],
        [
            [
                m.name,
                str(m.latest_version),
                str(m.aliases.get("champion", "-")),
                str(m.aliases.get("challenger", "-")),
                ", ".join(
                    f"{a}={v}" for a, v in sorted(m.aliases.items()) if a not in ("champion", "challenger")
                )
                or "-",
            ]
            for m in models
        ],
    )


@models_app.command()
def show(
    ctx: typer.Context,
    reference: Annotated[str, typer.Argument(help="NAME (its champion), NAME@ALIAS or NAME/VERSION.")],
    as_json: JsonOption = False,
) -> None:
    """One version: status, aliases, artifact, signature, training run, validation."""
    try:
        version = _call(ctx, lambda stub: stub.GetModelVersion(_selector(reference), timeout=10))
    except ClientError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(_as_dict(version), indent=2))
        return
    report = json.loads(version.validation.report_json) if version.validation.report_json else None
    lines = [
        f"{version.model} version {version.version} ({_STATUS.get(version.status, 'unknown')})",
        f"  aliases:     {', '.join(version.aliases) or '-'}",
        f"  created:     {version.created_at.ToDatetime().isoformat(timespec='seconds')}",
        f"  artifact:    sha256 {version.artifact_sha256} ({version.artifact_size} bytes)",
        f"  inputs:      {', '.join(f'{t.name} {t.datatype} {list(t.shape)}' for t in version.inputs)}",
        f"  outputs:     {', '.join(f'{t.name} {t.datatype} {list(t.shape)}' for t in version.outputs)}",
        f"  dataset:     {version.dataset}@{version.dataset_version}",
        f"  run:         {version.run.run_id} in {version.run.train_seconds:.2f} s, seed {version.run.seed}",
        f"  params:      {dict(version.run.params)}",
        f"  metrics:     {dict(version.run.metrics)}",
    ]
    if report is None:
        lines.append("  validation:  not validated yet")
    else:
        lines.append(f"  validation:  {'passed' if report.get('passed') else 'failed'}")
        for gate in report.get("gates", []):
            verdict = "pass" if gate["passed"] else "FAIL"
            measured = f"{gate.get('value')} vs {gate.get('threshold')}"
            lines.append(f"    {verdict}  {gate['name']}: {measured} {gate['detail']}")
    typer.echo("\n".join(lines))


@models_app.command()
def promote(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to point the alias at.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
    reason: Annotated[str, typer.Option(help="Why; kept in the audit history.")] = "",
    actor: Annotated[str, typer.Option(envvar="USER", help="Who; kept in the audit history.")] = "cli",
) -> None:
    """Point an alias (champion by default) at a version; serving follows a champion move."""
    request = pb.SetAliasRequest(model=model, alias=alias, version=version, actor=actor, reason=reason)
    try:
        moved = _call(ctx, lambda stub: stub.SetAlias(request, timeout=10))
    except ClientError as error:
        _fail(error)
    typer.echo(f"{moved.model}@{alias} -> version {moved.version}")


@models_app.command()
def rollback(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit history.")] = "",
    actor: Annotated[str, typer.Option(envvar="USER", help="Who; kept in the audit history.")] = "cli",
) -> None:
    """Move champion back to the version it held before its latest move."""
    request = pb.RollbackRequest(model=model, actor=actor, reason=reason)
    try:
        moved = _call(ctx, lambda stub: stub.Rollback(request, timeout=10))
    except ClientError as error:
        _fail(error)
    typer.echo(f"{moved.model}@champion -> version {moved.version}")


@models_app.command()
def history(
    ctx: typer.Context, model: Annotated[str, typer.Argument(help="Model name.")], as_json: JsonOption = False
) -> None:
    """Every alias move, oldest first: when, which alias, from and to, who and why."""
    try:
        moves = _call(
            ctx, lambda stub: stub.GetAliasHistory(pb.GetAliasHistoryRequest(model=model), timeout=10)
        )
    except ClientError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(_as_dict(moves), indent=2))
        return
    _table(
        ["when", "alias", "from", "to", "actor", "reason"],
        [
            [
                m.at.ToDatetime().isoformat(timespec="seconds"),
                m.alias,
                str(m.from_version or "-"),
                str(m.to_version),
                m.actor,
                m.reason,
            ]
            for m in moves.moves
        ],
    )


@models_app.command()
def lineage(
    ctx: typer.Context,
    reference: Annotated[str, typer.Argument(help="NAME/VERSION, NAME@ALIAS or NAME (its champion).")],
    as_json: JsonOption = False,
) -> None:
    """Walk a version back to its training run, dataset version and raw batches."""
    try:

        def read(stub: registry_pb2_grpc.RegistryServiceStub) -> pb.Lineage:
            version = stub.GetModelVersion(_selector(reference), timeout=10)
            return stub.GetLineage(
                pb.GetLineageRequest(model=version.model, version=version.version), timeout=10
            )

        found = _call(ctx, read)
    except ClientError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(_as_dict(found), indent=2))
        return
    version = found.version
    typer.echo(f"{version.model} version {version.version}")
    typer.echo(f"  <- training run {version.run.run_id} ({dict(version.run.params)})")
    typer.echo(f"  <- dataset {found.dataset}@{found.dataset_version}")
    typer.echo(f"     (parent version {found.parent_dataset_version or '-'})")
    for batch in found.batch_ids:
        typer.echo(f"  <- batch {batch}")
