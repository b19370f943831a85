"""`cascade explain MODEL --row ...`: why the served model answers as it does for one row.

Registered in shared/cli/main.py; asks serving's Explainer (cascade.explain.v1) through the typed
client (cascade.client.explain), imported only when the command runs so `cascade --help` stays
quick. Prints the base value, each feature's value and attribution sorted by |attribution| with a
text bar, and the output, which is the base value plus the attributions."""

from __future__ import annotations

import asyncio
import json
import math
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from cascade.cli.client import TokenOption, security_of, stack_config
from cascade.cli.errors import EXIT_USAGE, failure_of
from cascade.errors import CascadeError, InvalidArgument, truncate
from cascade.stack import Stack

if TYPE_CHECKING:
    from cascade.client.records import Explained

__all__ = ["explain", "format_explanation", "parse_row_values"]

BAR_WIDTH = 24
CALL_TIMEOUT_SECONDS = 120.0


def explain(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model (its name in the registry and serving).")],
    row: Annotated[
        str | None,
        typer.Option(help="The row as comma-separated numbers, one per feature in the model's order."),
    ] = None,
    row_json: Annotated[
        str | None,
        typer.Option("--row-json", help='The row as a JSON object, {"feature": number, ...}.'),
    ] = None,
    version: Annotated[
        int | None, typer.Option(min=1, help="A loaded version of the model (default: the champion).")
    ] = None,
    output_class: Annotated[
        int | None,
        typer.Option("--class", min=0, help="Explain this class's output (default: the predicted class)."),
    ] = None,
    top: Annotated[
        int, typer.Option(min=0, help="Show only the K features with the largest |attribution| (0: all).")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON.")] = False,
    address: Annotated[
        str | None, typer.Option(help="host:port of serving (default: this stack's serving).")
    ] = None,
    token: TokenOption = "",
) -> None:
    """Explain MODEL's answer for one row: the base value (the model's mean output over its
    training background), each feature's value and attribution (Shapley values, largest first), and
    the output, which equals the base value plus the attributions. Serving computes it with the
    version it serves, off its inference path."""
    if (row is None) == (row_json is None):
        _fail("give the row with exactly one of --row or --row-json", EXIT_USAGE)
    config = stack_config(ctx)
    where = address or Stack(config).address("serving")
    try:
        explained, values = asyncio.run(
            _explain(where, security_of(config, token), model, row, row_json, version, output_class)
        )
    except CascadeError as error:
        failure = failure_of(error)
        _fail(str(failure), failure.exit_code)
    if as_json:
        document = explained.to_dict()
        document["row"] = dict(zip(explained.features, values, strict=True))
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(format_explanation(explained, values, top))


def _fail(message: str, exit_code: int) -> NoReturn:
    typer.secho(f"Error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(exit_code)


async def _explain(
    address: str,
    security: Any,
    model: str,
    row: str | None,
    row_json: str | None,
    version: int | None,
    output_class: int | None,
) -> tuple[Explained, list[float]]:
    import numpy as np

    from cascade.client.explain import ExplainClient, feature_rows
    from cascade.client.serving import ServingClient

    serving = ServingClient(address, security)
    try:
        asked = str(version) if version is not None else ""
        if row is not None:
            values = parse_row_values(row)
        else:
            assert row_json is not None
            served = await serving.model_metadata(model, asked)
            values = [float(v) for v in feature_rows(model, served.features, _json_row(row_json))[0]]
        explainer = ExplainClient(serving.service, timeout=CALL_TIMEOUT_SECONDS)
        explained = await explainer.explain(
            model, np.asarray([values], dtype=np.float64), version=asked, output_class=output_class
        )
        return explained, values
    finally:
        await serving.close()


def parse_row_values(text: str) -> list[float]:
    """Comma-separated finite numbers; InvalidArgument naming the first that is not one."""
    values: list[float] = []
    for position, cell in enumerate(text.split(","), start=1):
        try:
            value = float(cell.strip())
        except ValueError:
            raise InvalidArgument(
                f"--row value {position} is not a number: {truncate(repr(cell.strip()), 60)}"
            ) from None
        if not math.isfinite(value):
            raise InvalidArgument(f"--row value {position} is {value}; every value must be finite")
        values.append(value)
    return values


def _json_row(text: str) -> dict[str, float]:
    try:
        loaded = json.loads(text)
    except ValueError as error:
        raise InvalidArgument(f"--row-json is not valid JSON: {truncate(str(error), 120)}") from None
    if not isinstance(loaded, dict):
        raise InvalidArgument('--row-json must be one JSON object, {"feature": number, ...}')
    row: dict[str, float] = {}
    for name, value in loaded.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidArgument(f"--row-json: {truncate(str(name), 60)!r} needs a finite number")
        row[str(name)] = float(value)
    return row


def _number(value: float) -> str:
    return f"{value:.6g}"


def format_explanation(explained: Explained, values: list[float], top: int = 0) -> str:
    """The first row's explanation, readable: base, features by |attribution| with bars, output."""
    attributed = explained.rows[0]
    target = _target(explained)
    lines = [
        f"{explained.model} v{explained.version}: {target}, {explained.method} attributions "
        f"({explained.evaluations} model evaluation{'' if explained.evaluations == 1 else 's'}, "
        f"{explained.seconds:.2f} s)",
        "",
    ]
    order = sorted(range(len(explained.features)), key=lambda i: -abs(attributed.attributions[i]))
    shown = order[:top] if top else order
    largest = max((abs(attributed.attributions[i]) for i in order), default=0.0) or 1.0
    width = max([len("feature"), *(len(explained.features[i]) for i in shown)])
    lines.append(f"  {'base value':<{width}}  {'':>12}  {_number(attributed.base_value):>12}")
    lines.append(f"  {'feature':<{width}}  {'value':>12}  {'attribution':>12}")
    for index in shown:
        attribution = attributed.attributions[index]
        cells = max(round(abs(attribution) / largest * BAR_WIDTH), 1 if attribution else 0)
        bar = ("+" if attribution > 0 else "-") + "█" * cells if attribution else ""
        lines.append(
            f"  {explained.features[index]:<{width}}  {_number(values[index]):>12}  "
            f"{attribution:>+12.6g}  {bar}"
        )
    rest = order[len(shown) :]
    if rest:
        together = sum(attributed.attributions[i] for i in rest)
        lines.append(f"  ({len(rest)} more features, together {together:+.6g})")
    total = sum(attributed.attributions)
    lines.append(
        f"  {'output':<{width}}  {'':>12}  {_number(attributed.output):>12}  "
        f"= base {_number(attributed.base_value)} {'+' if total >= 0 else '-'} {_number(abs(total))}"
    )
    return "\n".join(lines)


def _target(explained: Explained) -> str:
    """What was decomposed: e.g. "class 1 (malignant), probability" or "value"."""
    row = explained.rows[0]
    if row.class_index < 0:
        return f"the predicted {explained.output_space}"
    label = f" ({row.class_label})" if row.class_label and row.class_label != str(row.class_index) else ""
    return f"class {row.class_index}{label}, {explained.output_space}"
