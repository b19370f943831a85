"""The Models page's Traffic section: how a model's requests are split (champion, canary, shadow),
its rollout through the plan's steps, and the monitor's live comparison of the challenger against
the champion; with a canary percent set for a version, and a running rollout aborted with a reason.

The split, the rollout and the comparison are read afresh every `refresh_seconds` (a Streamlit
fragment): a rollout moves on its own, as the monitor advances or rolls it back. Writes go to the
registry alone, which checks who may make them; its answer, or its refusal, is shown as it is.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from cascade.client.monitor import LiveComparison
from cascade.client.records import Model, ModelVersion, Rollout, Traffic
from cascade.client.sdk import AsyncClient
from cascade.console.connection import run, show_error, stack_view
from cascade.console.tables import NONE, markdown_literal
from cascade.errors import CascadeError, NotFound

__all__ = ["TrafficReading", "read_traffic", "render_model", "show_traffic"]

# Recorded as the actor when the stack does not authenticate (as on the rest of the Models page).
ACTOR = "console"
_MESSAGE_KEY = "traffic_section_message"
_VERDICT_STYLE = {"advancing": "success", "promoted": "success", "rolled_back": "error"}


@dataclass(frozen=True)
class TrafficReading:
    """One reading of a model's traffic, and the monitor's comparison or why there is none (the
    monitor may be down while the registry answers: the split still shows)."""

    traffic: Traffic
    comparison: LiveComparison | None
    comparison_missing: str


def render_model(model: Model, versions: list[ModelVersion], forget: Callable[[], None]) -> None:
    """The section for `model`; `forget` clears the page's cached reads after a write."""
    st.subheader("Traffic")
    _show_message()
    st.fragment(run_every=stack_view().refresh_seconds)(_live)(model.name)
    _controls(model, versions, forget)


def _live(name: str) -> None:
    try:
        reading = run(lambda client: read_traffic(client, name))
    except CascadeError as error:
        show_error(error, f"Reading the traffic of {name}")
        return
    show_traffic(reading)


async def read_traffic(client: AsyncClient, model: str) -> TrafficReading:
    """The registry's split and the monitor's comparison, asked together."""
    traffic, comparison = await asyncio.gather(
        client.registry.get_traffic(model),
        client.monitor.get_live_comparison(model),
        return_exceptions=True,
    )
    if isinstance(traffic, BaseException):
        raise traffic
    if isinstance(comparison, NotFound):
        return TrafficReading(traffic, None, "The monitor has no live comparison for this model yet.")
    if isinstance(comparison, CascadeError):
        return TrafficReading(traffic, None, f"Reading the live comparison: {comparison}")
    if isinstance(comparison, BaseException):
        raise comparison
    return TrafficReading(traffic, comparison, "")


# ---------------------------------------------------------------------- what is shown


def show_traffic(reading: TrafficReading) -> None:
    traffic = reading.traffic
    _split(traffic)
    if traffic.rollout is not None:
        _rollout(traffic.rollout)
    else:
        st.caption("No rollout yet: the model has never rolled a version out through a plan.")
    _comparison(reading)


def _split(traffic: Traffic) -> None:
    canary = traffic.canary_percent if traffic.canary_version else 0.0
    rows = [
        {
            "ROLE": "champion",
            "VERSION": _version(traffic.champion_version),
            "SHARE": _percent(100.0 - canary) if traffic.champion_version else NONE,
            "WHAT IT DOES": "answers the requests the canary does not",
        },
        {
            "ROLE": "canary",
            "VERSION": _version(traffic.canary_version),
            "SHARE": _percent(canary) if traffic.canary_version else NONE,
            "WHAT IT DOES": "answers its share of requests",
        },
        {
            "ROLE": "shadow",
            "VERSION": _version(traffic.shadow_version),
            "SHARE": _percent(traffic.shadow_percent) if traffic.shadow_version else NONE,
            "WHAT IT DOES": "scores its share beside the champion, never answers",
        },
    ]
    st.table(pd.DataFrame(rows), hide_index=True)
    changed = f"; last change {_at(traffic.updated_at)} UTC" if traffic.updated_at else ""
    by = f" by {traffic.actor}" if traffic.actor else ""
    why = f": {traffic.reason}" if traffic.reason else ""
    st.caption(f"Split revision {traffic.revision}{changed}{by}{why}")


def _rollout(rollout: Rollout) -> None:
    steps = rollout.plan.steps
    if rollout.running:
        since = f" since {_at(rollout.step_started_at)} UTC" if rollout.step_started_at else ""
        step = rollout.current_step
        doing = f"{step.stage} {_percent(step.percent)}" if step is not None else "?"
        st.info(
            f"Rolling out v{rollout.version}: step {rollout.step + 1} of {len(steps)} ({doing}){since}. "
            f"Started {_at(rollout.started_at)} UTC."
        )
    elif rollout.state == "promoted":
        st.success(f"The rollout of v{rollout.version} ended: promoted to champion. {rollout.cause}".strip())
    else:
        st.error(
            f"The rollout of v{rollout.version} was rolled back at step {rollout.step + 1}: {rollout.cause}"
        )
    rows = [
        {
            "STEP": index + 1,
            "STAGE": step.stage,
            "PERCENT": _percent(step.percent),
            "MIN REQUESTS": step.min_requests,
            "MIN SECONDS": f"{step.min_seconds:g}",
            "STATUS": _step_status(rollout, index),
        }
        for index, step in enumerate(steps)
    ]
    st.table(pd.DataFrame(rows), hide_index=True)
    thresholds = rollout.plan.thresholds
    st.caption(
        "Held to: error rate ≤ "
        f"{thresholds.max_error_rate:g}, p99 ≤ {thresholds.max_p99_ratio:g} times the champion's "
        f"(above {thresholds.p99_floor_ms:g} ms), agreement ≥ {thresholds.min_agreement:g} or difference "
        f"ratio ≤ {thresholds.max_difference_ratio:g}, prediction drift ≤ "
        f"{thresholds.max_prediction_drift:g}, metric drop ≤ {thresholds.max_metric_drop:g}, judged from "
        f"{thresholds.min_compared_rows} compared rows (0: not checked)"
        + ("; the registry's default plan" if rollout.plan.is_default else "")
    )


def _step_status(rollout: Rollout, index: int) -> str:
    if index < rollout.step:
        return "passed"
    if index > rollout.step:
        return "to come" if rollout.running else NONE
    if rollout.running:
        return "current"
    return "passed" if rollout.state == "promoted" else "rolled back here"


def _comparison(reading: TrafficReading) -> None:
    st.markdown("**Live comparison** (the monitor, over the current step)")
    found = reading.comparison
    if found is None:
        st.caption(reading.comparison_missing)
        return
    style = _VERDICT_STYLE.get(found.verdict, "info")
    verdict = f"Verdict: {found.verdict}" + (f": {found.detail}" if found.detail else "")
    getattr(st, style)(verdict)
    challenger, champion = f"v{found.challenger_version}", _version(found.champion_version)
    figures = [
        ("stage", f"{found.stage}, step {found.step + 1}", ""),
        ("step started", f"{_at(found.step_started_at)} UTC" if found.step_started_at else NONE, ""),
        ("requests", str(found.challenger_requests), f"{challenger} answered or scored"),
        ("failures", str(found.challenger_failures), challenger),
        ("error rate", _figure(found.challenger_error_rate), challenger),
        (
            "p99 ms",
            f"{_figure(found.challenger_p99_ms)} vs {_figure(found.champion_p99_ms)}",
            "challenger vs champion",
        ),
        ("compared rows", str(found.compared_rows), "scored by both"),
        ("agreement", _figure(found.agreement), "same label (classifiers)"),
        ("difference ratio", _figure(found.difference_ratio), "p90 |difference| / champion std (regressors)"),
        ("prediction drift", _figure(found.prediction_drift), "PSI of the outputs"),
        (
            "live metric",
            f"{_figure(found.challenger_metric)} vs {_figure(found.champion_metric)}",
            f"on {found.challenger_labelled_rows} and {found.champion_labelled_rows} labelled rows",
        ),
        ("shadow dropped", str(found.shadow_dropped), "scorings serving shed under load"),
    ]
    table = pd.DataFrame(
        [
            {"FIGURE": name, "VALUE": markdown_literal(value), "OF": markdown_literal(of) if of else NONE}
            for name, value, of in figures
        ]
    )
    st.table(table, hide_index=True)
    updated = f"; updated {_at(found.updated_at)} UTC" if found.updated_at else ""
    st.caption(f"{challenger} against champion {champion}{updated}")


# ---------------------------------------------------------------------- writes


def _controls(model: Model, versions: list[ModelVersion], forget: Callable[[], None]) -> None:
    name = model.name
    champion = model.aliases.get("champion", 0)
    others = [v.version for v in reversed(versions) if v.version != champion] or [
        v.version for v in reversed(versions)
    ]
    canary, abort = st.columns(2)
    with canary.form(f"canary_{name}", clear_on_submit=True):
        st.markdown("**Set a canary**")
        st.caption("The version answers this share of requests; 0% takes the canary away. The shadow stays.")
        version = st.number_input("Canary version", min_value=1, value=others[0] if others else 1, step=1)
        percent = st.number_input("Percent of requests", min_value=0.0, max_value=100.0, value=10.0, step=5.0)
        reason = st.text_input("Reason for the canary")
        confirmed = st.checkbox("I confirm the canary")
        if st.form_submit_button("Set canary") and _confirmed(reason, confirmed):
            chosen, share, why = int(version), float(percent), reason.strip()
            _write(
                f"Setting v{chosen} as canary at {_percent(share)}",
                lambda client: _set_canary(client, name, chosen, share, why),
                lambda traffic: f"{name}: {_split_summary(traffic)}",
                forget,
            )
    with abort.form(f"abort_{name}", clear_on_submit=True):
        st.markdown("**Abort the rollout**")
        st.caption("All traffic goes back to the champion at once; the reason is recorded as the cause.")
        reason = st.text_input("Reason for the abort")
        confirmed = st.checkbox("I confirm the abort")
        if st.form_submit_button("Abort rollout") and _confirmed(reason, confirmed):
            why = reason.strip()
            _write(
                "Aborting the rollout",
                lambda client: client.registry.abort_rollout(name, reason=why, actor=ACTOR),
                lambda traffic: f"{name}: rollout aborted; {_split_summary(traffic)}",
                forget,
            )


async def _set_canary(client: AsyncClient, model: str, version: int, percent: float, reason: str) -> Traffic:
    """The split with this canary and the shadow as it is now (SetTraffic takes the whole split)."""
    current = await client.registry.get_traffic(model)
    return await client.registry.set_traffic(
        model,
        canary_version=version if percent > 0 else 0,
        canary_percent=percent,
        shadow_version=current.shadow_version,
        shadow_percent=current.shadow_percent,
        actor=ACTOR,
        reason=reason,
    )


def _write(
    doing: str, call: Callable[[AsyncClient], Any], answer: Callable[[Any], str], forget: Callable[[], None]
) -> None:
    try:
        result = run(call)
    except CascadeError as error:
        st.session_state[_MESSAGE_KEY] = ("error", f"{doing} refused: {error}")
    else:
        st.session_state[_MESSAGE_KEY] = ("ok", answer(result))
    forget()
    st.rerun()


def _show_message() -> None:
    message = st.session_state.pop(_MESSAGE_KEY, None)
    if message is not None:
        kind, text = message
        (st.success if kind == "ok" else st.error)(text)


def _confirmed(reason: str, confirmed: bool) -> bool:
    if not reason.strip():
        st.error("Give a reason: the registry keeps it in the alias history.")
        return False
    if not confirmed:
        st.error("Tick the confirmation box first.")
        return False
    return True


# ---------------------------------------------------------------------- formatting


def _split_summary(traffic: Traffic) -> str:
    parts = [f"champion {_version(traffic.champion_version)}"]
    if traffic.canary_version:
        parts.append(f"canary v{traffic.canary_version} at {_percent(traffic.canary_percent)}")
    if traffic.shadow_version:
        parts.append(f"shadow v{traffic.shadow_version} at {_percent(traffic.shadow_percent)}")
    return ", ".join(parts) + f" (revision {traffic.revision})"


def _version(version: int) -> str:
    return f"v{version}" if version else NONE


def _percent(value: float) -> str:
    return f"{value:g}%"


def _figure(value: float) -> str:
    return NONE if math.isnan(value) else f"{value:.4g}"


def _at(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else NONE
