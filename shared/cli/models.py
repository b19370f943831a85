"""`cascade models`: the registry's models and versions, aliases, tags, search, lineage and audit
history, as tables or JSON.

A version is named as MLflow users write it: NAME/VERSION, or NAME@ALIAS; a bare NAME means the
model itself where that makes sense (`show`, `tag`, `describe`) and its champion elsewhere."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from cascade.cli.client import TokenOption, ingest_file, remote_service, security_of, stack_config
from cascade.cli.errors import EXIT_TIMEOUT, EXIT_USAGE, ClientError, failure_of
from cascade.cli.follow import key_metric, validation_failure
from cascade.client.calls import call
from cascade.client.records import (
    AliasMove,
    Approval,
    GlobalAttribution,
    ImportResult,
    Lineage,
    Model,
    ModelVersion,
    TensorSpec,
    TrainingRun,
    VersionStatus,
)
from cascade.client.registry import Comparison, MetricFilter, RegistryClient
from cascade.errors import CascadeError
from cascade.grpc_io import file_chunks
from cascade.stack import Stack
from cascade.stubs.cascade.trainer.v1 import trainer_pb2, trainer_pb2_grpc

__all__ = ["models_app"]

models_app = typer.Typer(
    help="The model registry: models and their versions, aliases (champion, challenger, any other), "
    "tags and descriptions, search, promotion and rollback, lineage and the alias audit history.",
    no_args_is_help=True,
)


class Policy(StrEnum):
    automatic = "automatic"
    manual = "manual"
    progressive = "progressive"


class Status(StrEnum):
    pending = "pending"
    ready = "ready"
    failed = "failed"


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
AddressOption = Annotated[
    str | None,
    typer.Option(help="The registry's gRPC address, host:port (default: this stack's).", show_default=False),
]
ReasonOption = Annotated[str, typer.Option(help="Why; kept in the audit history.")]
ActorOption = Annotated[str, typer.Option(envvar="USER", help="Who; kept in the audit history.")]
T = TypeVar("T")

_REFERENCE = re.compile(r"^(?P<model>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))?$")
_METRIC = re.compile(r"^\s*(?P<name>[^<>=!\s]+)\s*(?P<op>>=|<=|==|!=|=|>|<)\s*(?P<value>\S+)\s*$")
_COMPARISONS: dict[str, Comparison] = {
    "==": "==",
    "=": "==",
    "!=": "!=",
    ">": ">",
    ">=": ">=",
    "<": "<",
    "<=": "<=",
}
_CALL_TIMEOUT = 10.0


# ---------------------------------------------------------------------- plumbing


def _call(
    ctx: typer.Context, address: str | None, token: str, calls: Callable[[RegistryClient], Awaitable[T]]
) -> T:
    """Make calls on the registry (this stack's, or the one at `address`); a failed call ends the
    command with its message and exit code (cascade.cli.errors.failure_of)."""

    async def run() -> T:
        async with remote_service(stack_config(ctx), "registry", address, token) as service:
            return await calls(RegistryClient(service, timeout=_CALL_TIMEOUT))

    try:
        return asyncio.run(run())
    except CascadeError as error:
        _fail(failure_of(error))


def _require_model(ctx: typer.Context, address: str | None, token: str, model: str) -> None:
    """Exit NOT_FOUND's code for a model the registry does not know. Some of its calls (history,
    search, rollback) answer a mistyped name with an empty list or a refusal instead."""
    _call(ctx, address, token, lambda registry: registry.get_model(model))


def _fail(error: ClientError) -> NoReturn:
    typer.secho(f"Error: {error}", err=True, fg=typer.colors.RED)
    raise typer.Exit(error.exit_code)


def _as_dict(record: Any) -> Any:
    """A record (cascade.client.records) as JSON values: its fields by name, times in ISO 8601."""
    return json.loads(json.dumps(dataclasses.asdict(record), default=_json_value))


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "-"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    for line in _table_lines(headers, rows):
        typer.echo(line)


def _table_lines(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _parse_reference(reference: str) -> re.Match[str]:
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        _fail(ClientError(f"not a model reference: {reference!r} (use NAME, NAME@ALIAS or NAME/VERSION)"))
    return match


def _selected_version(reference: str) -> Callable[[RegistryClient], Awaitable[ModelVersion]]:
    """The version NAME (its champion), NAME@ALIAS or NAME/VERSION names, as a registry call."""
    match = _parse_reference(reference)
    if match["version"]:
        return lambda registry: registry.get_version(match["model"], int(match["version"]))
    return lambda registry: registry.get_version(match["model"], alias=match["alias"] or "champion")


def _model_or_version(reference: str) -> tuple[str, int]:
    """(model, version) of NAME/VERSION, or (model, 0) for a bare NAME (the model itself)."""
    match = _parse_reference(reference)
    if match["alias"]:
        _fail(ClientError(f"give NAME or NAME/VERSION, not an alias: {reference!r}"))
    return match["model"], int(match["version"] or 0)


def _key_values(pairs: list[str] | None) -> dict[str, str]:
    """KEY=VALUE arguments as a dict (the value may itself contain '=')."""
    parsed: dict[str, str] = {}
    for pair in pairs or []:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE")
        parsed[key] = value
    return parsed


def _metric_filters(expressions: list[str] | None) -> list[MetricFilter]:
    filters = []
    for expression in expressions or []:
        match = _METRIC.fullmatch(expression)
        try:
            value = float(match["value"]) if match else None
        except ValueError:
            value = None
        if match is None or value is None:
            raise typer.BadParameter(
                f"{expression!r} is not NAME OP NUMBER, e.g. 'cv_accuracy>=0.9' (OP: = != > >= < <=)"
            )
        filters.append(MetricFilter(match["name"], _COMPARISONS[match["op"]], value))
    return filters


_LONG_VALUE = 60  # characters of a tag value shown; the rest is behind --json
_TAGS_SHOWN = 12  # tags listed one per line; the rest is behind --json
_LINE = 110  # where a long sentence wraps
_NEWEST = 10  # versions `models show NAME` lists


def _pairs(values: Any) -> str:
    return ", ".join(f"{k}={_short(str(v))}" for k, v in sorted(values.items())) or "-"


def _short(value: str, limit: int = _LONG_VALUE) -> str:
    """A value cut to one readable piece: the trainer's tags hold whole JSON records."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({len(value)} chars; --json shows all)"


def _tag_lines(tags: dict[str, str]) -> list[str]:
    """`  tags:` and one tag a line, each value cut, at most _TAGS_SHOWN of them: a version's tags
    hold the trainer's records (trials, spec, importances), kilobytes each."""
    if not tags:
        return ["  tags:        -"]
    lines = ["  tags:"]
    for key, value in sorted(tags.items())[:_TAGS_SHOWN]:
        lines.append(f"    {_short(key, 40)}={_short(value)}")
    if len(tags) > _TAGS_SHOWN:
        lines.append(f"    ... and {len(tags) - _TAGS_SHOWN} more (--json shows all)")
    return lines


def _wrapped(text: str, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, _LINE, subsequent_indent=indent, break_on_hyphens=False) or [""]


def _tensors(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in specs) or "-"


def _number(value: float) -> str:
    return f"{value:.4g}"


def _metrics(run: TrainingRun) -> str:
    return ", ".join(f"{k}={_number(x)}" for k, x in sorted(run.metrics.items())) or "-"


def _validation_metrics(version: ModelVersion) -> dict[str, float]:
    """The validator's metrics (`validation.candidate`, `validation.champion`), as search names them."""
    try:
        report = json.loads(version.validation_report_json) if version.validation_report_json else {}
    except ValueError:
        return {}
    found = report.get("metrics") if isinstance(report, dict) else None
    if not isinstance(found, dict):
        return {}
    return {f"validation.{k}": float(v) for k, v in found.items() if isinstance(v, int | float)}


def _why_no_champion(newest: ModelVersion | None) -> str:
    """The line in place of the champion: why there is none, from the newest version."""
    if newest is None:
        return "No champion yet: no versions."
    if newest.status is VersionStatus.failed:
        gates = "; ".join(gate.describe() for gate in newest.failed_gates) or "see its report (--json)"
        return f"No champion: v{newest.version} failed validation: {gates}"
    if newest.status is VersionStatus.pending:
        return f"No champion yet: v{newest.version} awaits the validator's verdict."
    if "challenger" in newest.aliases and {"canary", "shadow"} & set(newest.aliases):
        return (
            f"No champion: v{newest.version} passed validation and is rolling out on live traffic "
            f"(`cascade models traffic {newest.model}`)."
        )
    if "challenger" in newest.aliases:
        return (
            f"No champion: v{newest.version} passed validation and is challenger, awaiting approval (manual "
            f"policy; `cascade models approve {newest.model} {newest.version} --reason ...` serves it)."
        )
    return f"No champion: v{newest.version} passed validation but was not promoted."


# ---------------------------------------------------------------------- reading


@models_app.command("list")
def list_models(
    ctx: typer.Context, as_json: JsonOption = False, address: AddressOption = None, token: TokenOption = ""
) -> None:
    """Every model with its latest version, aliases and promotion policy."""
    models = _call(ctx, address, token, lambda registry: registry.list_models())
    if as_json:
        typer.echo(json.dumps([_as_dict(m) for m in models], indent=2))
        return
    _table(
        ["model", "latest", "champion", "challenger", "other aliases", "policy"],
        [
            [
                m.name,
                str(m.latest_version),
                str(m.aliases.get("champion", "-")),
                str(m.aliases.get("challenger", "-")),
                _pairs({a: v for a, v in m.aliases.items() if a not in ("champion", "challenger")}),
                m.promotion_policy,
            ]
            for m in models
        ],
    )


@models_app.command()
def show(
    ctx: typer.Context,
    reference: Annotated[
        str,
        typer.Argument(
            help="NAME (the model, its champion and newest versions), NAME@ALIAS or NAME/VERSION."
        ),
    ],
    versions: Annotated[
        int, typer.Option(min=1, max=1000, help="With NAME, how many of the newest versions to list.")
    ] = _NEWEST,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole records as JSON.")] = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """A model: its aliases, latest version, champion (or why there is none) and newest versions,
    each with status, key metric, dataset version and failed gates; or one version: status,
    aliases, tags, artifact, signature, training run and validation. Long tags are cut; `--json`
    prints everything."""
    match = _parse_reference(reference)
    if match["alias"] or match["version"]:
        version = _call(ctx, address, token, _selected_version(reference))
        typer.echo(json.dumps(_as_dict(version), indent=2) if as_json else _format_version(version))
        return

    async def read(registry: RegistryClient) -> tuple[Model, ModelVersion | None, list[ModelVersion]]:
        model = await registry.get_model(reference)
        newest = await registry.search_versions(reference, max_results=versions)
        champion = next((v for v in newest if "champion" in v.aliases), None)
        if champion is None and "champion" in model.aliases:
            champion = await registry.get_version(reference, model.aliases["champion"])
        return model, champion, newest

    model, champion, newest = _call(ctx, address, token, read)
    if as_json:
        whole = {
            "model": _as_dict(model),
            "champion": champion and _as_dict(champion),
            "versions": [_as_dict(v) for v in newest],
        }
        typer.echo(json.dumps(whole, indent=2))
        return
    typer.echo("\n".join(_format_model(model, champion, newest)))


def _format_model(model: Model, champion: ModelVersion | None, newest: list[ModelVersion]) -> list[str]:
    latest = newest[0] if newest else None
    others = {a: v for a, v in model.aliases.items() if a != "champion"}
    lines = [
        model.name,
        *_wrapped(f"  description: {model.description or '-'}", " " * 15),
        f"  policy:      {model.promotion_policy}",
        f"  champion:    v{champion.version}" if champion else "  champion:    -",
        f"  aliases:     {', '.join(f'{a}=v{v}' for a, v in sorted(others.items())) or '-'}",
        f"  latest:      v{latest.version} ({latest.status})" if latest else "  latest:      no versions yet",
        f"  created:     {_when(model.created_at)}",
        f"  inputs:      {_short(_tensors(model.inputs), _LINE)}",
        f"  outputs:     {_short(_tensors(model.outputs), _LINE)}",
        *_tag_lines(model.tags),
        "",
    ]
    if champion is not None:
        origin = (
            f"trained on {champion.dataset}@{champion.dataset_version[:12]}"
            if champion.dataset
            else "imported without a reference: UNMONITORED"
        )
        metric = key_metric(champion)
        lines.append(f"Champion: v{champion.version}, {origin}" + (f", {metric}" if metric else ""))
    if latest is not None and (champion is None or latest.version > champion.version):
        # Nothing newer serves: say why, from the newest version (failed, pending, not promoted).
        lines += _wrapped(_why_no_champion(latest) if champion is None else _newer_than_champion(latest))
    if newest:
        total = model.latest_version
        lines += ["", f"Newest versions ({len(newest)} of {total}):", *_version_table(newest)]
        lines.append(f"`cascade models show {model.name}/VERSION` shows one; --json prints the records.")
    return lines


def _newer_than_champion(latest: ModelVersion) -> str:
    why = _why_no_champion(latest).split(": ", 1)[1]
    return f"Newer than the champion: {why}"


def _version_table(found: list[ModelVersion], extra_metrics: list[str] | None = None) -> list[str]:
    """Versions as rows (status, aliases, created, dataset version, key metric), a failed one
    followed by its failed gates."""
    headers = ["version", "status", "aliases", "created", "dataset version", "metric"]
    rows = []
    for v in found:
        metrics = [key_metric(v)] if key_metric(v) else []
        values = v.run.metrics | _validation_metrics(v)
        metrics += [f"{name}={_number(values[name])}" for name in extra_metrics or [] if name in values]
        rows.append(
            [
                str(v.version),
                str(v.status),
                ", ".join(v.aliases) or "-",
                f"{v.created_at:%Y-%m-%d %H:%M:%S}" if v.created_at else "-",
                v.dataset_version[:12] or "-",
                ", ".join(dict.fromkeys(metrics)) or "-",
            ]
        )
    lines = _table_lines(headers, rows)
    out = [lines[0]]
    for line, v in zip(lines[1:], found, strict=True):
        out.append(line)
        out += [f"      {_short(gate.describe(), _LINE)}" for gate in v.failed_gates]
    return out


def _verdict(version: ModelVersion) -> str:
    if not version.validation_report_json:
        return f"{version.status}, not validated yet"
    if version.validation_passed:
        return "passed validation"
    failed = [gate.name for gate in version.failed_gates]
    return f"FAILED validation ({', '.join(failed) or 'see below'})"


_ATTRIBUTED_SHOWN = 10  # features listed by `models show NAME/VERSION`; --json has the tags whole


def _attribution_lines(version: ModelVersion) -> list[str]:
    """What the version relies on: its global attribution (the trainer's `global_attribution` tag)
    beside its permutation importance (`feature_importance`), the most attributed features first."""
    attribution = GlobalAttribution.of_tags(version.tags)
    try:
        recorded = json.loads(version.tags.get("feature_importance", "") or "{}")
    except ValueError:
        recorded = {}
    importance = {
        str(name): float(value)
        for name, value in (recorded.items() if isinstance(recorded, dict) else ())
        if isinstance(value, int | float)
    }
    if attribution is None and not importance:
        return []
    mean_abs = attribution.mean_abs if attribution is not None else {}
    total = sum(mean_abs.values()) or 1.0
    ranked = (
        sorted(mean_abs, key=lambda f: -mean_abs[f])
        if mean_abs
        else sorted(importance, key=lambda f: -importance[f])
    )
    how = (
        f"{attribution.method} Shapley values, {attribution.output_space} space, "
        f"{attribution.rows} held-out rows"
        if attribution is not None
        else "no global attribution on this version"
    )
    width = max(len("feature"), *(len(name) for name in ranked[:_ATTRIBUTED_SHOWN]))
    lines = [
        f"  attribution: mean |attribution| ({how}) beside permutation importance",
        f"    {'feature':<{width}}  {'mean |attr|':>11}  {'share':>6}  {'permutation':>11}",
    ]
    for name in ranked[:_ATTRIBUTED_SHOWN]:
        value = f"{mean_abs[name]:.4g}" if name in mean_abs else "-"
        share = f"{mean_abs[name] / total:.1%}" if name in mean_abs else "-"
        permuted = f"{importance[name]:.4g}" if name in importance else "-"
        lines.append(f"    {name:<{width}}  {value:>11}  {share:>6}  {permuted:>11}")
    if len(ranked) > _ATTRIBUTED_SHOWN:
        lines.append(f"    ... and {len(ranked) - _ATTRIBUTED_SHOWN} more (--json shows the tags whole)")
    return lines


def _format_version(version: ModelVersion) -> str:
    lines = [
        f"{version.model} version {version.version} ({version.status})",
        f"  aliases:     {', '.join(version.aliases) or '-'}",
        *_wrapped(f"  description: {version.description or '-'}", " " * 15),
        f"  created:     {_when(version.created_at)}",
        f"  artifact:    sha256 {version.artifact_sha256} ({version.artifact_size} bytes)",
        f"  inputs:      {_short(_tensors(version.inputs), _LINE)}",
        f"  outputs:     {_short(_tensors(version.outputs), _LINE)}",
        f"  dataset:     {version.dataset}@{version.dataset_version}"
        if version.dataset
        else "  dataset:     none, imported without a reference: UNMONITORED (no validation, no drift)",
        f"  run:         {version.run.run_id} in {version.run.train_seconds:.2f} s, seed {version.run.seed}",
        *_wrapped(f"  params:      {_pairs(version.run.params)}", " " * 15),
        *_wrapped(f"  metrics:     {_metrics(version.run)}", " " * 15),
        *_tag_lines(version.tags),
        *_attribution_lines(version),
    ]
    if not version.validation_report_json:
        lines.append("  validation:  not validated yet")
    else:
        lines.append(f"  validation:  {'passed' if version.validation_passed else 'failed'}")
        lines += [f"    {_short(gate.describe(), _LINE)}" for gate in version.gates]
    return "\n".join(lines)


@models_app.command()
def search(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Only this model's versions (default: every model's).")] = "",
    tag: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE the version's tag must equal; repeatable.")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            help="A condition on a training metric (cv_accuracy, holdout_accuracy; cv_r2, holdout_r2 for "
            "a regressor) or on the validator's (validation.candidate, validation.champion: accuracy or "
            "R² on fresh rows), e.g. 'cv_accuracy>=0.9' (= != > >= < <=); repeatable, all must hold."
        ),
    ] = None,
    status: Annotated[Status | None, typer.Option(help="Only versions with this status.")] = None,
    dataset_version: Annotated[
        str, typer.Option(help="Only versions trained on this dataset version.", show_default=False)
    ] = "",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many versions.")] = 100,
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Find versions by tags, metrics, status and dataset version, newest first."""
    tags, filters = _key_values(tag), _metric_filters(metric)
    found = _call(
        ctx,
        address,
        token,
        lambda registry: registry.search_versions(
            model,
            tags=tags,
            metrics=filters,
            status=VersionStatus(status.value) if status else None,
            dataset_version=dataset_version,
            max_results=limit,
        ),
    )
    if not found and model:
        _require_model(ctx, address, token, model)
    if as_json:
        typer.echo(json.dumps([_as_dict(v) for v in found], indent=2))
        return
    if not found:
        typer.echo("No versions match.")
        return
    # The key metric, and those the filters name: tags and the whole run are behind --json.
    names = [f.name for f in filters]
    for line in _search_table(found, names):
        typer.echo(line)


def _search_table(found: list[ModelVersion], metric_names: list[str]) -> list[str]:
    by_model: dict[str, list[ModelVersion]] = {}
    for version in found:
        by_model.setdefault(version.model, []).append(version)
    table = _version_table(found, metric_names)
    # One table for every model: its rows carry the model's name in front.
    width = max(len("model"), *(len(v.model) for v in found))
    out = [f"{'MODEL'.ljust(width)}  {table[0]}"]
    rows = iter(found)
    for line in table[1:]:
        if line.startswith("      "):  # a failed gate under its version
            out.append(f"{' ' * width}  {line}")
        else:
            out.append(f"{next(rows).model.ljust(width)}  {line}")
    return out


@models_app.command()
def history(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Every alias move, oldest first: when, which alias, from and to (a canary's or shadow's
    with the share of requests it gave), who and why."""
    moves: list[AliasMove] = _call(ctx, address, token, lambda registry: registry.alias_history(model))
    if not moves:
        _require_model(ctx, address, token, model)
    if as_json:
        typer.echo(json.dumps({"moves": [_as_dict(m) for m in moves]}, indent=2))
        return
    _table(
        ["when", "alias", "from", "to", "actor", "reason"],
        [
            [
                _when(m.at),
                m.alias,
                str(m.from_version or "-"),
                _moved_to(m),
                m.actor,
                m.reason,
            ]
            for m in moves
        ],
    )


def _moved_to(move: AliasMove) -> str:
    if not move.to_version:
        return "(deleted)"
    if move.alias in ("canary", "shadow") and move.traffic_percent > 0:
        return f"{move.to_version} ({move.traffic_percent:g}%)"
    return str(move.to_version)


@models_app.command()
def lineage(
    ctx: typer.Context,
    reference: Annotated[str, typer.Argument(help="NAME/VERSION, NAME@ALIAS or NAME (its champion).")],
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Walk a version back to its training run, dataset version and raw batches."""

    selected = _selected_version(reference)

    async def read(registry: RegistryClient) -> Lineage:
        version = await selected(registry)
        return await registry.lineage(version.model, version.version)

    found = _call(ctx, address, token, read)
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


# ---------------------------------------------------------------------- changing


@models_app.command()
def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name: letters, digits, '_', '.', '-'.")],
    description: Annotated[str, typer.Option(help="What the model is for.")] = "",
    policy: Annotated[
        Policy | None,
        typer.Option(
            help="What a passed validation does: automatic makes it champion, manual makes it "
            "challenger for a person to promote, progressive rolls it out through shadow and canary "
            "steps (default: the registry's).",
            show_default=False,
        ),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE tag of the model; repeatable.")] = None,
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Register a model before its first version (a first version registers it too)."""
    tags = _key_values(tag)
    model = _call(
        ctx,
        address,
        token,
        lambda registry: registry.register_model(
            name, description=description, tags=tags, promotion_policy=policy.value if policy else None
        ),
    )
    if as_json:
        typer.echo(json.dumps(_as_dict(model), indent=2))
        return
    typer.echo(f"Registered model {model.name!r} (policy {model.promotion_policy})")


@models_app.command()
def tag(
    ctx: typer.Context,
    reference: Annotated[str, typer.Argument(help="NAME/VERSION to tag a version, NAME to tag the model.")],
    tags: Annotated[
        list[str] | None, typer.Argument(help="KEY=VALUE tags to set.", show_default=False)
    ] = None,
    delete: Annotated[list[str] | None, typer.Option(help="A tag KEY to remove; repeatable.")] = None,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Set (KEY=VALUE) and remove (--delete KEY) tags of a version or a model."""
    model, version = _model_or_version(reference)
    to_set, to_delete = _key_values(tags), list(delete or [])
    if not to_set and not to_delete:
        raise typer.BadParameter("give KEY=VALUE tags to set or --delete KEY")
    result: Model | ModelVersion
    if version:
        result = _call(
            ctx,
            address,
            token,
            lambda registry: registry.update_version(model, version, set_tags=to_set, delete_tags=to_delete),
        )
    else:
        result = _call(
            ctx,
            address,
            token,
            lambda registry: registry.update_model(model, set_tags=to_set, delete_tags=to_delete),
        )
    typer.echo(f"{reference} tags: {_pairs(result.tags)}")


@models_app.command()
def describe(
    ctx: typer.Context,
    reference: Annotated[str, typer.Argument(help="NAME/VERSION for a version, NAME for the model.")],
    text: Annotated[str, typer.Argument(help="The new description ('' clears it).")],
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Set the description of a version or a model."""
    model, version = _model_or_version(reference)
    if version:
        _call(ctx, address, token, lambda registry: registry.update_version(model, version, description=text))
    else:
        _call(ctx, address, token, lambda registry: registry.update_model(model, description=text))
    typer.echo(f"{reference}: description set")


@models_app.command("policy")
def set_policy(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    policy: Annotated[
        Policy,
        typer.Argument(
            help="automatic: a passed candidate becomes champion; manual: it becomes challenger; "
            "progressive: it becomes challenger and rolls out through the model's plan "
            "(`cascade models rollout`)."
        ),
    ],
    actor: ActorOption = "cli",
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Choose what a passed validation does to MODEL's aliases."""
    changed = _call(
        ctx,
        address,
        token,
        lambda registry: registry.update_model(model, promotion_policy=policy.value, actor=actor),
    )
    typer.echo(f"{changed.name}: promotion policy {changed.promotion_policy}")


def _set_alias(
    ctx: typer.Context,
    address: str | None,
    token: str,
    model: str,
    alias: str,
    version: int,
    actor: str,
    reason: str,
    force: bool,
) -> None:
    moved = _call(
        ctx,
        address,
        token,
        lambda registry: registry.set_alias(model, alias, version, actor=actor, reason=reason, force=force),
    )
    typer.echo(f"{moved.model}@{alias} -> version {moved.version}")


ForceOption = Annotated[bool, typer.Option("--force", help="Allow a version that failed validation.")]


@models_app.command()
def promote(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to point the alias at.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
    reason: ReasonOption = "",
    actor: ActorOption = "cli",
    force: ForceOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Point an alias (champion by default) at a version; serving follows a champion move."""
    _set_alias(ctx, address, token, model, alias, version, actor, reason, force)


@models_app.command("alias")
def set_alias(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias: lower-case letters, digits, '_' and '-'.")],
    version: Annotated[int, typer.Argument(help="Version to point it at.")],
    reason: ReasonOption = "",
    actor: ActorOption = "cli",
    force: ForceOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Point ALIAS at a version, creating or moving it (`promote` is this for champion)."""
    _set_alias(ctx, address, token, model, alias, version, actor, reason, force)


@models_app.command()
def unalias(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias to delete.")],
    reason: ReasonOption = "",
    actor: ActorOption = "cli",
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Delete an alias; the audit history keeps the move."""
    previous = _call(
        ctx, address, token, lambda registry: registry.delete_alias(model, alias, actor=actor, reason=reason)
    )
    typer.echo(f"{model}@{alias} deleted (it pointed at version {previous})")


@models_app.command()
def rollback(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    reason: ReasonOption = "",
    actor: ActorOption = "cli",
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Move champion back to the version it held before its latest move."""
    _require_model(ctx, address, token, model)
    moved = _call(ctx, address, token, lambda registry: registry.rollback(model, actor=actor, reason=reason))
    typer.echo(f"{moved.model}@champion -> version {moved.version}")


class ApprovalState(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    superseded = "superseded"


DecisionReasonOption = Annotated[
    str, typer.Option("--reason", help="Why (required); kept in the audit history with who decided.")
]


@models_app.command()
def approvals(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name (default: every model you may read).")] = "",
    status: Annotated[ApprovalState | None, typer.Option(help="Only approvals in this state.")] = None,
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Versions awaiting approval (manual promotion policy), and past decisions, newest first."""
    found: list[Approval] = _call(
        ctx, address, token, lambda registry: registry.list_approvals(model, status.value if status else None)
    )
    if not found and model:
        _require_model(ctx, address, token, model)
    if as_json:
        typer.echo(json.dumps({"approvals": [_as_dict(a) for a in found]}, indent=2))
        return
    if not found:
        typer.echo("No approvals" + (f" for {model}" if model else "") + ".")
        return
    _table(
        ["model", "version", "status", "requested", "champion then", "decided by", "reason"],
        [
            [
                a.model,
                str(a.version),
                _approval_state(a),
                _when(a.requested_at),
                f"v{a.champion_version}" if a.champion_version else "-",
                a.decided_by or "-",
                a.reason or "-",
            ]
            for a in found
        ],
    )


def _approval_state(approval: Approval) -> str:
    if approval.status == "pending":
        return "awaiting approval"
    if approval.status == "superseded":
        return f"superseded by v{approval.superseded_by}"
    return approval.status


def _decide(
    ctx: typer.Context,
    address: str | None,
    token: str,
    decision: Callable[[RegistryClient], Awaitable[Approval]],
    as_json: bool,
) -> None:
    decided = _call(ctx, address, token, decision)
    if as_json:
        typer.echo(json.dumps(_as_dict(decided), indent=2))
    elif decided.status == "approved":
        typer.echo(f"{decided.model} v{decided.version} approved by {decided.decided_by}: now champion")
    else:
        typer.echo(f"{decided.model} v{decided.version} rejected by {decided.decided_by}: champion stays")


@models_app.command()
def approve(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        int, typer.Argument(help="The version awaiting approval (default: the pending one).")
    ] = 0,
    reason: DecisionReasonOption = ...,  # type: ignore[assignment]
    actor: ActorOption = "cli",
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Approve the version awaiting approval: it becomes champion and serving swaps to it (needs
    the manage level on the model)."""
    _decide(
        ctx,
        address,
        token,
        lambda registry: registry.approve_version(model, version, reason=reason, actor=actor),
        as_json,
    )


@models_app.command()
def reject(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        int, typer.Argument(help="The version awaiting approval (default: the pending one).")
    ] = 0,
    reason: DecisionReasonOption = ...,  # type: ignore[assignment]
    actor: ActorOption = "cli",
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Reject the version awaiting approval; the champion stays (needs the manage level)."""
    _decide(
        ctx,
        address,
        token,
        lambda registry: registry.reject_version(model, version, reason=reason, actor=actor),
        as_json,
    )


class ImportFormat(StrEnum):
    onnx = "onnx"
    sklearn_pickle = "sklearn-pickle"
    xgboost = "xgboost"
    lightgbm = "lightgbm"


_IMPORT_FORMATS = {
    ImportFormat.onnx: trainer_pb2.MODEL_FORMAT_ONNX,
    ImportFormat.sklearn_pickle: trainer_pb2.MODEL_FORMAT_SKLEARN_PICKLE,
    ImportFormat.xgboost: trainer_pb2.MODEL_FORMAT_XGBOOST,
    ImportFormat.lightgbm: trainer_pb2.MODEL_FORMAT_LIGHTGBM,
}
_IMPORT_SUFFIXES = {
    ".onnx": ImportFormat.onnx,
    ".pkl": ImportFormat.sklearn_pickle,
    ".pickle": ImportFormat.sklearn_pickle,
    ".json": ImportFormat.xgboost,
    ".ubj": ImportFormat.xgboost,
    ".txt": ImportFormat.lightgbm,
}


@models_app.command("import")
def import_model(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model to add a version to (created if new).")],
    file: Annotated[Path, typer.Argument(help="The model file, as its library saved it.", exists=True)],
    model_format: Annotated[
        ImportFormat | None,
        typer.Option(
            "--format",
            help="How FILE was saved [default: by suffix: .onnx, .pkl (scikit-learn pickle, if the "
            "trainer allows pickles), .json (XGBoost save_model), .txt (LightGBM save_model)].",
            show_default=False,
        ),
    ] = None,
    features: Annotated[
        str, typer.Option(help="The input columns in the model's order, a,b,c [default: the reference's].")
    ] = "",
    reference: Annotated[
        str,
        typer.Option(
            help="DATASET[@VERSION] ingest holds: parity rows come from it, the validator gates the model on "
            "it against the champion, and the monitor compares traffic with it.",
        ),
    ] = "",
    reference_file: Annotated[
        Path | None,
        typer.Option(
            help="A CSV or Parquet file ingested first as a version of dataset NAME (which, like any "
            "new data, also lets the trainer train its own candidate on it), then the reference.",
            exists=True,
        ),
    ] = None,
    target: Annotated[str, typer.Option(help="With --reference-file, its label column.")] = "target",
    parity_rows: Annotated[
        Path | None,
        typer.Option(
            help="Without a reference: a CSV of a few rows (a header naming the features) to check the "
            "conversion on. The model is then registered unmonitored: no validation, no drift reports.",
            exists=True,
        ),
    ] = None,
    task: Annotated[str, typer.Option(help="classification or regression [default: the reference's].")] = "",
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Wait for the validator's verdict and print it; a failed one ends with exit code 2.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="With --follow, seconds to wait for the verdict.")] = 300.0,
    reason: ReasonOption = "",
    actor: ActorOption = "cli",
    as_json: JsonOption = False,
    address: Annotated[
        str | None,
        typer.Option(
            help="The trainer's gRPC address, host:port (default: this stack's).", show_default=False
        ),
    ] = None,
    token: TokenOption = "",
) -> None:
    """Register a model trained elsewhere: the trainer converts it to ONNX, checks it predicts what
    the original predicts, and uploads it tagged source=imported. With a reference it is then
    validated against the champion, served if it passes and drift-monitored like a trained one."""
    if sum(bool(x) for x in (reference, reference_file, parity_rows)) != 1:
        _fail(ClientError("give one of --reference, --reference-file or --parity-rows", EXIT_USAGE))
    chosen = model_format or _IMPORT_SUFFIXES.get(file.suffix.lower())
    if chosen is None:
        _fail(
            ClientError(f"cannot tell the format of {file.name} from its suffix; pass --format", EXIT_USAGE)
        )
    config = stack_config(ctx)
    stack = Stack(config)
    dataset, _, dataset_version = reference.partition("@")
    if reference_file is not None:
        try:
            ingested = ingest_file(
                stack.address("ingest"), reference_file, name, target, security=security_of(config, token)
            )
        except ClientError as error:
            _fail(error)
        except CascadeError as error:
            _fail(failure_of(error))
        if not ingested.rows_accepted:
            _fail(ClientError(f"ingest accepted no rows of {reference_file.name}", EXIT_USAGE))
        dataset, dataset_version = name, ingested.dataset_version
    header = trainer_pb2.ImportHeader(
        model=name,
        format=_IMPORT_FORMATS[chosen],
        features=[f.strip() for f in features.split(",") if f.strip()],
        task=task,
        dataset=dataset,
        dataset_version=dataset_version,
        parity_rows_csv=parity_rows.read_bytes() if parity_rows is not None else b"",
        actor=actor,
        reason=reason,
    )

    def requests() -> Iterator[trainer_pb2.ImportModelRequest]:
        yield trainer_pb2.ImportModelRequest(header=header)
        for _offset, data in file_chunks(file):
            yield trainer_pb2.ImportModelRequest(chunk=data)

    async def upload() -> ImportResult:
        async with remote_service(config, "trainer", address, token) as trainer:
            stub = trainer_pb2_grpc.TrainerServiceStub(trainer.channel)
            response = await call(
                trainer, f"importing {file.name} as {name}", lambda: stub.ImportModel(requests(), timeout=300)
            )
        return ImportResult.of(response)

    try:
        imported = asyncio.run(upload())
    except CascadeError as error:
        _fail(failure_of(error))
    result: dict[str, Any] = {
        "model": name,
        "version": imported.model_version,
        "format": chosen.value,
        "parity_max_difference": imported.parity_max_difference,
        "parity_rows": imported.parity_rows,
        "monitored": imported.monitored,
        "reference": f"{dataset}@{dataset_version}" if dataset else None,
    }
    if not as_json:
        typer.echo(
            f"Imported {name} version {imported.model_version} from {file.name} ({chosen.value}): parity "
            f"max difference {imported.parity_max_difference:.2e} on {imported.parity_rows} rows; "
            + ("validation and monitoring follow." if imported.monitored else "UNMONITORED (no reference).")
        )
    verdict = None
    if follow and imported.monitored:
        verdict = _await_verdict(ctx, token, name, imported.model_version, timeout)
        result["verdict"] = json.loads(verdict.validation_report_json)
        if not as_json:
            typer.echo(f"{_verdict(verdict)}\n{_format_version(verdict)}")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    if verdict is not None and verdict.status is VersionStatus.failed:
        _fail(validation_failure(verdict))  # as `ingest --follow` and `train --follow` end


def _await_verdict(ctx: typer.Context, token: str, model: str, version: int, timeout: float) -> ModelVersion:
    """The version once the validator has recorded its verdict on it in the registry."""
    deadline = time.monotonic() + timeout
    while True:
        found = _call(ctx, None, token, lambda registry: registry.get_version(model, version))
        if found.validation_report_json:
            return found
        if time.monotonic() > deadline:
            _fail(
                ClientError(
                    f"no verdict on {model}/{version} within {timeout:g} s; "
                    "`cascade models show` tells later",
                    EXIT_TIMEOUT,
                )
            )
        time.sleep(1.0)


# `models traffic|canary|shadow|rollout` live in their own module, on this app.
import cascade.cli.traffic  # noqa: E402, F401
