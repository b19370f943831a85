"""`cascade monitor MODEL`: the monitor's latest drift report as a table per feature, and its history;
and while a challenger is on live traffic (a rollout), how it compares with the champion.

Registered in shared/cli/main.py; reads MonitorService over gRPC (imported only when the command
runs, so `cascade --help` stays quick)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING, Annotated

import typer

from cascade.cli.client import remote_service
from cascade.cli.errors import failure_of
from cascade.errors import CascadeError, NotFound
from cascade.stack import StackConfig

if TYPE_CHECKING:
    from cascade.stubs.cascade.monitor.v1 import monitor_pb2

__all__ = ["format_history", "format_live_comparison", "format_report", "monitor"]


def monitor(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model (its name in the registry and serving).")],
    address: Annotated[
        str | None, typer.Option(help="host:port of MonitorService (default: this stack's monitor).")
    ] = None,
    history: Annotated[int, typer.Option(help="Also list this many past verdicts and drift events.")] = 5,
) -> None:
    """Show MODEL's latest drift report: per feature the test, statistic, threshold and verdict; the
    prediction's drift, the champion's performance (measured, and estimated), and recent history;
    during a rollout, the challenger against the champion on live traffic and the monitor's verdict."""
    from cascade.client.calls import call
    from cascade.stubs.cascade.monitor.v1 import monitor_pb2, monitor_pb2_grpc

    config: StackConfig = ctx.obj

    live: list[monitor_pb2.LiveComparison] = []

    async def read() -> tuple[monitor_pb2.DriftReport, monitor_pb2.DriftHistory | None]:
        async with remote_service(config, "monitor", address) as service:
            stub = monitor_pb2_grpc.MonitorServiceStub(service.channel)
            request = monitor_pb2.GetDriftReportRequest(model=model)
            report = await call(
                service,
                f"reading the drift report of {model}",
                lambda: stub.GetDriftReport(request, timeout=10),
            )
            compare = monitor_pb2.GetLiveComparisonRequest(model=model)
            with contextlib.suppress(NotFound):  # no rollout on record: nothing to compare
                live.append(
                    await call(
                        service,
                        f"reading the live comparison of {model}",
                        lambda: stub.GetLiveComparison(compare, timeout=10),
                    )
                )
            if history <= 0:
                return report, None
            asked = monitor_pb2.GetDriftHistoryRequest(model=model, limit=history)
            past = await call(
                service,
                f"reading the drift history of {model}",
                lambda: stub.GetDriftHistory(asked, timeout=10),
            )
            return report, past

    try:
        report, past = asyncio.run(read())
    except CascadeError as error:
        failure = failure_of(error)
        typer.secho(f"Error: {failure}", err=True, fg=typer.colors.RED)
        raise typer.Exit(failure.exit_code) from None
    typer.echo(format_report(report))
    for comparison in live:
        typer.echo(format_live_comparison(comparison))
    if past is not None:
        typer.echo(format_history(past))


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.4g}"


def format_report(report: monitor_pb2.DriftReport) -> str:
    verdict = "DRIFTED" if report.dataset_drifted else "no drift"
    drifted = sum(feature.drifted for feature in report.features)
    lines = [
        f"{report.model}: champion v{report.model_version}, reference "
        f"{report.reference_dataset_version[:12]} ({report.reference_rows} rows), window of "
        f"{report.window_size} predictions ({report.predictions_seen} seen), "
        f"computed {report.computed_at.ToDatetime():%Y-%m-%d %H:%M:%S} UTC",
        f"dataset: {verdict} ({drifted} of {len(report.features)} features drifted)",
        "",
    ]
    rows = [*report.features, *([report.prediction] if report.HasField("prediction") else [])]
    width = max([len("feature"), *(len(row.feature) for row in rows)])
    lines.append(
        f"{'feature':<{width}}  {'test':<13}  {'statistic':>10}  {'p-value':>10}  {'threshold':>9}  drifted"
    )
    for row in rows:
        lines.append(
            f"{row.feature:<{width}}  {row.test:<13}  {_number(row.statistic):>10}  "
            f"{_number(row.p_value):>10}  {_number(row.threshold):>9}  {'YES' if row.drifted else 'no'}"
        )
    lines += _attribution_lines(report)
    if report.HasField("performance"):
        performance = report.performance
        measured = f"{performance.metric}: no labels yet"
        if performance.HasField("value"):
            measured = (
                f"{performance.metric} {performance.value:.4f} on {performance.labelled_rows} labelled rows"
            )
        champion = (
            f" vs {performance.champion_value:.4f} at validation"
            if performance.HasField("champion_value")
            else ""
        )
        lines += ["", f"performance: {measured}{champion}" + (" - DECAYED" if performance.decayed else "")]
        if performance.HasField("estimated_accuracy"):
            lines.append(
                f"estimated accuracy {performance.estimated_accuracy:.4f} ({performance.estimate_note})"
            )
        else:
            lines.append(f"estimated accuracy {performance.estimate_note}")
    return "\n".join(lines)


def _attribution_lines(report: monitor_pb2.DriftReport) -> list[str]:
    """Drift explained: each listed feature's share of the champion's |attribution|, reference ->
    window, the largest moves first; or why the drifted window was not explained."""
    if not report.attribution_shift:
        return ["", f"drift explained: {report.attribution_note}"] if report.attribution_note else []
    width = max([len("feature"), *(len(shift.feature) for shift in report.attribution_shift)])
    lines = [
        "",
        "drift explained: share of the champion's |attribution|, largest moves first",
        f"{'feature':<{width}}  {'reference':>9}  {'window':>9}  {'moved':>8}",
    ]
    for shift in report.attribution_shift:
        moved = shift.window_share - shift.reference_share
        lines.append(
            f"{shift.feature:<{width}}  {shift.reference_share:>9.1%}  "
            f"{shift.window_share:>9.1%}  {moved:>+8.1%}"
        )
    if report.attribution_note:
        lines.append(f"({report.attribution_note})")
    return lines


def format_live_comparison(comparison: monitor_pb2.LiveComparison) -> str:
    """The challenger against the champion on live traffic in the rollout's current step."""
    since = comparison.step_started_at.ToDatetime()
    error_rate = _number(100 * comparison.challenger_error_rate)
    closeness = (
        f"agreement {_number(comparison.agreement)}"
        if not math.isnan(comparison.agreement)
        else f"difference ratio {_number(comparison.difference_ratio)}"
    )
    lines = [
        "",
        f"live comparison: v{comparison.challenger_version} ({comparison.stage}, step {comparison.step + 1}, "
        f"since {since:%Y-%m-%d %H:%M:%S}) against champion v{comparison.champion_version}",
        f"  verdict: {comparison.verdict}: {comparison.detail}",
        f"  challenger: {comparison.challenger_requests} requests, {comparison.challenger_failures} failed "
        f"({error_rate}%), p99 {_number(comparison.challenger_p99_ms)} ms against the champion's "
        f"{_number(comparison.champion_p99_ms)} ms",
        f"  compared rows: {comparison.compared_rows}, {closeness}, "
        f"prediction drift (PSI) {_number(comparison.prediction_drift)}",
    ]
    if comparison.champion_labelled_rows or comparison.challenger_labelled_rows:
        lines.append(
            f"  with labels: challenger {_number(comparison.challenger_metric)} on "
            f"{comparison.challenger_labelled_rows} rows, champion {_number(comparison.champion_metric)} on "
            f"{comparison.champion_labelled_rows}"
        )
    if comparison.shadow_dropped:
        lines.append(f"  shadow scorings dropped under load: {comparison.shadow_dropped}")
    return "\n".join(lines)


def format_history(history: monitor_pb2.DriftHistory) -> str:
    lines = ["", "recent verdicts:"]
    for verdict in history.verdicts:
        lines.append(
            f"  {verdict.computed_at.ToDatetime():%H:%M:%S}  v{verdict.model_version}  "
            f"{'DRIFTED' if verdict.dataset_drifted else 'stable ':<7}  window {verdict.window_size}  "
            + (", ".join(verdict.drifted_features) or "-")
        )
    if history.drift_events:
        lines.append("drift events (emitted: the loop acts on it; held back: cooldown or not retrained):")
        for event in history.drift_events:
            when = event.emitted_at.ToDatetime()
            lines.append(
                f"  {when:%Y-%m-%d %H:%M:%S}  {event.kind} on v{event.model_version}  "
                f"{'held back' if event.held_back else 'emitted'}  {event.event_id}  {event.summary}"
            )
            if event.triggered:
                lines.append(f"      triggered: {event.triggered}")
    return "\n".join(lines)
