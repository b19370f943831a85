"""`cascade models traffic|canary|shadow|rollout`: progressive delivery from the command line. A
model's split (its champion answers; a canary answers a share of requests; a shadow scores a share
beside the champion without answering), and its rollout through a plan of shadow and canary steps
that the monitor advances on live traffic, or rolls back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cascade.cli.client import TokenOption
from cascade.cli.errors import EXIT_USAGE, ClientError
from cascade.cli.models import (
    ActorOption,
    AddressOption,
    JsonOption,
    _as_dict,
    _call,
    _fail,
    _when,
    _wrapped,
    models_app,
)
from cascade.client.records import Rollout, RolloutPlan, RolloutStep, RolloutThresholds, Traffic
from cascade.client.registry import RegistryClient

__all__ = ["plan_from_file"]

PercentOption = Annotated[
    float,
    typer.Option(
        "--percent", min=0, max=100, help="The share of requests, 0..100; 0 takes the version off traffic."
    ),
]
TrafficReasonOption = Annotated[str, typer.Option(help="Why; kept in the alias history and the event.")]


def _percent(value: float) -> str:
    return f"{value:g}%"


def _step(step: RolloutStep) -> str:
    holds = [
        f"{step.min_requests} requests" if step.min_requests else "",
        f"{step.min_seconds:g} s" if step.min_seconds else "",
    ]
    held = " and ".join(h for h in holds if h)
    return f"{step.stage} {_percent(step.percent)}" + (f" (at least {held})" if held else "")


def _plan_lines(plan: RolloutPlan, current: int | None = None) -> list[str]:
    lines = []
    for index, step in enumerate(plan.steps):
        mark = "->" if index == current else "  "
        lines.append(f"  {mark} {index}. {_step(step)}")
    lines.append(f"     {len(plan.steps)}. champion")
    t = plan.thresholds
    checks = [
        f"error rate <= {t.max_error_rate:g}" if t.max_error_rate else "",
        f"p99 <= {t.max_p99_ratio:g}x the champion's (above {t.p99_floor_ms:g} ms)"
        if t.max_p99_ratio
        else "",
        f"agreement >= {t.min_agreement:g}" if t.min_agreement else "",
        f"difference ratio <= {t.max_difference_ratio:g}" if t.max_difference_ratio else "",
        f"prediction PSI <= {t.max_prediction_drift:g}" if t.max_prediction_drift else "",
        f"metric drop <= {t.max_metric_drop:g}" if t.max_metric_drop else "",
    ]
    said = ", ".join(c for c in checks if c) or "none"
    lines += _wrapped(f"  thresholds: {said}; comparisons judged from {t.min_compared_rows} rows", " " * 14)
    return lines


def _rollout_lines(rollout: Rollout) -> list[str]:
    total = len(rollout.plan.steps)
    if rollout.running and rollout.current_step is not None:
        state = f"running, step {rollout.step} of {total}: {_step(rollout.current_step)}"
        state += f", since {_when(rollout.step_started_at)}"
    elif rollout.state == "promoted":
        state = "promoted: it is the champion"
    else:
        state = f"rolled back at step {rollout.step}"
    lines = [f"Rollout of v{rollout.version} (started {_when(rollout.started_at)}): {state}"]
    if rollout.cause:
        lines += _wrapped(f"  cause: {rollout.cause}", " " * 9)
    lines += _plan_lines(rollout.plan, rollout.step if rollout.running else None)
    return lines


def _traffic_lines(traffic: Traffic) -> list[str]:
    champion = f"v{traffic.champion_version}" if traffic.champion_version else "-"
    answered = 100 - traffic.canary_percent if traffic.canary_version else 100
    lines = [
        traffic.model,
        f"  champion:  {champion}" + (f" answers {_percent(answered)}" if traffic.champion_version else ""),
        f"  canary:    v{traffic.canary_version} answers {_percent(traffic.canary_percent)}"
        if traffic.canary_version
        else "  canary:    -",
        f"  shadow:    v{traffic.shadow_version} scores {_percent(traffic.shadow_percent)} beside champion"
        if traffic.shadow_version
        else "  shadow:    -",
        f"  revision:  {traffic.revision}"
        + (f", {_when(traffic.updated_at)} by {traffic.actor}" if traffic.revision else " (never changed)"),
    ]
    if traffic.reason:
        lines += _wrapped(f"  why:       {traffic.reason}", " " * 13)
    if traffic.rollout is not None:
        lines += ["", *_rollout_lines(traffic.rollout)]
    return lines


def _print_traffic(traffic: Traffic, as_json: bool) -> None:
    typer.echo(json.dumps(_as_dict(traffic), indent=2) if as_json else "\n".join(_traffic_lines(traffic)))


@models_app.command()
def traffic(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Which versions take MODEL's requests: the champion, a canary answering a share, a shadow
    scoring a share beside the champion; and its latest rollout with its plan and cause."""
    _print_traffic(_call(ctx, address, token, lambda registry: registry.get_traffic(model)), as_json)


def _set_one(
    ctx: typer.Context,
    address: str | None,
    token: str,
    model: str,
    alias: str,
    version: int,
    percent: float,
    actor: str,
    reason: str,
) -> Traffic:
    """Set the canary or the shadow, keeping the other as it is (`--percent 0`: take it off); if
    the split changes between the read and the write, the registry refuses rather than undo it."""
    chosen = (version, percent) if percent > 0 else (0, 0.0)

    async def change(registry: RegistryClient) -> Traffic:
        now = await registry.get_traffic(model)
        canary = chosen if alias == "canary" else (now.canary_version, now.canary_percent)
        shadow = chosen if alias == "shadow" else (now.shadow_version, now.shadow_percent)
        return await registry.set_traffic(
            model,
            canary_version=canary[0],
            canary_percent=canary[1],
            shadow_version=shadow[0],
            shadow_percent=shadow[1],
            actor=actor,
            reason=reason,
            expected_revision=now.revision,  # refused, not undone, if it changed since
        )

    return _call(ctx, address, token, change)


@models_app.command()
def canary(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(min=0, help="The version that answers a share of requests.")],
    percent: PercentOption = ...,  # type: ignore[assignment]
    reason: TrafficReasonOption = "",
    actor: ActorOption = "cli",
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Let VERSION answer --percent of MODEL's requests beside the champion (`--percent 0`: no
    canary); the shadow stays. Every serving replica follows. Refused while a rollout runs."""
    _print_traffic(_set_one(ctx, address, token, model, "canary", version, percent, actor, reason), as_json)


@models_app.command()
def shadow(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(min=0, help="The version scored beside the champion.")],
    percent: PercentOption = ...,  # type: ignore[assignment]
    reason: TrafficReasonOption = "",
    actor: ActorOption = "cli",
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """Score --percent of MODEL's requests with VERSION too, after the champion answered them (it
    never answers; the monitor compares the two). `--percent 0`: no shadow; the canary stays."""
    _print_traffic(_set_one(ctx, address, token, model, "shadow", version, percent, actor, reason), as_json)


def plan_from_file(path: Path) -> tuple[list[RolloutStep], RolloutThresholds]:
    """A plan file: {"steps": [{"stage": "shadow"|"canary", "percent", "min_requests",
    "min_seconds"}, ...], "thresholds": {...}} (thresholds left out keep their defaults).
    ClientError (exit 2) naming what is wrong."""
    try:
        document: Any = json.loads(path.read_text())
    except OSError as exc:
        raise ClientError(f"cannot read the plan {path}: {exc.strerror or exc}", EXIT_USAGE) from exc
    except ValueError as exc:
        raise ClientError(f"the plan {path} is not JSON: {exc}", EXIT_USAGE) from exc
    if not isinstance(document, dict) or not isinstance(document.get("steps"), list):
        raise ClientError(f'the plan {path} needs a list of steps: {{"steps": [...]}}', EXIT_USAGE)
    try:
        steps = [RolloutStep(**step) for step in document["steps"]]
        thresholds = RolloutThresholds(**(document.get("thresholds") or {}))
    except TypeError as exc:  # an unknown or missing field
        raise ClientError(f"the plan {path}: {exc}", EXIT_USAGE) from exc
    for index, step in enumerate(steps):
        if step.stage not in ("shadow", "canary"):
            raise ClientError(f"the plan {path}: step {index}'s stage must be shadow or canary", EXIT_USAGE)
    return steps, thresholds


@models_app.command()
def rollout(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        int, typer.Argument(min=0, help="Start rolling this version out (it must have passed validation).")
    ] = 0,
    plan: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help='Give MODEL this plan first, a JSON file: {"steps": [{"stage": "shadow", "percent": 100, '
            '"min_requests": 200, "min_seconds": 10}, ...], "thresholds": {"max_error_rate": 0.01, ...}}.',
            show_default=False,
        ),
    ] = None,
    abort: Annotated[
        bool, typer.Option("--abort", help="Roll the running rollout back now: all traffic to the champion.")
    ] = False,
    reason: Annotated[
        str, typer.Option(help="Why; required with --abort (it is the rollback's cause).")
    ] = "",
    actor: ActorOption = "cli",
    as_json: JsonOption = False,
    address: AddressOption = None,
    token: TokenOption = "",
) -> None:
    """MODEL's rollout: without VERSION, its plan and latest rollout; with VERSION, roll it out
    from the plan's first step (the monitor then advances it on live traffic, and the last step
    makes it champion); --plan sets the plan first; --abort --reason R rolls it back."""
    if abort and (version or plan):
        _fail(ClientError("--abort takes no VERSION and no --plan", EXIT_USAGE))
    if abort and not reason.strip():
        _fail(
            ClientError("--abort needs --reason: the cause goes into the history and the event", EXIT_USAGE)
        )
    if abort:
        _print_traffic(
            _call(
                ctx,
                address,
                token,
                lambda registry: registry.abort_rollout(model, reason=reason, actor=actor),
            ),
            as_json,
        )
        return
    try:
        chosen = plan_from_file(plan) if plan is not None else None
    except ClientError as error:
        _fail(error)

    async def act(registry: RegistryClient) -> tuple[RolloutPlan, Traffic]:
        if chosen is not None:
            await registry.set_rollout_plan(model, chosen[0], chosen[1], actor=actor)
        if version:
            await registry.start_rollout(model, version, actor=actor, reason=reason)
        return await registry.get_rollout_plan(model), await registry.get_traffic(model)

    current_plan, split = _call(ctx, address, token, act)
    if as_json:
        typer.echo(json.dumps({"plan": _as_dict(current_plan), "traffic": _as_dict(split)}, indent=2))
        return
    if version:
        typer.echo(f"{model} v{version}: rollout started")
        typer.echo("\n".join(_traffic_lines(split)))
        return
    origin = "the registry's default" if current_plan.is_default else f"set by {current_plan.actor}"
    lines = [f"{model}'s rollout plan ({origin}):", *_plan_lines(current_plan)]
    if split.rollout is not None:
        lines += ["", *_rollout_lines(split.rollout)]
    else:
        lines += ["", "No rollout yet."]
    typer.echo("\n".join(lines))
