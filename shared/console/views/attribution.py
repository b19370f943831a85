"""The console's attribution panels: a version's global attribution beside its permutation
importance (Models page), and a drift report's attribution shift (Drift page).

Both are read from records the pages already hold: the trainer's `global_attribution` and
`feature_importance` tags on a version, and the monitor's `attribution_shift` on its report."""

from __future__ import annotations

import json
from collections.abc import Sequence

import altair as alt
import pandas as pd
import streamlit as st

from cascade.client.records import AttributionShift, DriftReport, GlobalAttribution, ModelVersion

__all__ = ["importance_frame", "permutation_importance", "render_shift", "render_version", "shift_frame"]

SHOWN = 20  # features drawn, the most attributed first; the table holds them all
REFERENCE, WINDOW = "reference", "window"


def permutation_importance(version: ModelVersion) -> dict[str, float]:
    """The trainer's `feature_importance` tag (mean score drop when a feature is shuffled)."""
    try:
        found = json.loads(version.tags.get("feature_importance", "") or "{}")
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(k): float(v) for k, v in found.items() if isinstance(v, int | float)}


def importance_frame(version: ModelVersion) -> pd.DataFrame:
    """One row per feature: its mean |attribution| and share of their total, and its permutation
    importance; the most attributed first (the most important when there is no attribution)."""
    attribution = GlobalAttribution.of_tags(version.tags)
    importance = permutation_importance(version)
    mean_abs = attribution.mean_abs if attribution is not None else {}
    names = list(dict.fromkeys([*mean_abs, *importance]))
    total = sum(mean_abs.values()) or 1.0
    frame = pd.DataFrame(
        {
            "feature": names,
            "mean |attribution|": [mean_abs.get(name) for name in names],
            "attribution share": [mean_abs[name] / total if name in mean_abs else None for name in names],
            "permutation importance": [importance.get(name) for name in names],
        }
    )
    order = "mean |attribution|" if mean_abs else "permutation importance"
    return frame.sort_values(order, ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def render_version(versions: Sequence[ModelVersion], key: str) -> None:
    """The Models page's panel: one version's global attribution beside its permutation importance."""
    st.subheader("What the model relies on")
    if not versions:
        return
    newest_first = list(reversed(versions))
    champion = next((v for v in newest_first if "champion" in v.aliases), newest_first[0])
    numbers = [v.version for v in newest_first]
    number = st.selectbox(
        "Version", numbers, index=numbers.index(champion.version), key=f"attribution_version_{key}"
    )
    version = next(v for v in newest_first if v.version == number)
    attribution = GlobalAttribution.of_tags(version.tags)
    frame = importance_frame(version)
    if frame.empty:
        st.caption(
            f"v{version.version} carries neither a global attribution nor a permutation importance "
            "(an imported version, or one trained before the trainer recorded them)."
        )
        return
    if attribution is None:
        st.caption(
            f"v{version.version} has no global attribution (trained before the trainer computed one, "
            "imported without a reference dataset, or not explainable within the trainer's limits); "
            "its permutation importance alone."
        )
    else:
        st.caption(
            f"Global attribution: mean |attribution| per feature over {attribution.rows} held-out rows, "
            f"{attribution.method} Shapley values of the served ONNX in {attribution.output_space} space; "
            "beside it, permutation importance: how much the hold-out score drops when the feature is "
            "shuffled. Both rank what the model relies on; they need not agree on correlated features."
        )
        _attribution_chart(frame.head(SHOWN), version.version)
    st.dataframe(frame, hide_index=True, width="stretch")


def _attribution_chart(frame: pd.DataFrame, version: int) -> None:
    title = f"v{version}: share of mean |attribution| per feature"
    chart = (
        alt.Chart(frame.dropna(subset=["attribution share"]))
        .mark_bar()
        .encode(
            x=alt.X("attribution share:Q", axis=alt.Axis(format="%")),
            y=alt.Y("feature:N", sort=None, title=None),
            tooltip=[
                "feature:N",
                alt.Tooltip("attribution share:Q", format=".1%"),
                alt.Tooltip("mean |attribution|:Q", format=".4g"),
                alt.Tooltip("permutation importance:Q", format=".4g"),
            ],
        )
        .properties(title=title, height=max(120, 18 * len(frame)))
    )
    st.altair_chart(chart, width="stretch", alt=title)


def shift_frame(shifts: Sequence[AttributionShift]) -> pd.DataFrame:
    """One row per feature, the largest move first (as the monitor sends them)."""
    return pd.DataFrame(
        {
            "feature": [s.feature for s in shifts],
            "reference share": [s.reference_share for s in shifts],
            "window share": [s.window_share for s in shifts],
            "moved": [s.moved for s in shifts],
        }
    )


def render_shift(report: DriftReport) -> None:
    """The Drift page's panel: which features the champion's predictions lean on differently."""
    st.subheader("Drift explained")
    if not report.attribution_shift:
        st.caption(
            report.attribution_note
            or "Computed when a window drifts: the latest window did not (or the monitor predates it)."
        )
        return
    top = report.attribution_shift[0]
    st.markdown(
        f"**{top.feature}** moved most: {top.reference_share:.1%} of the champion's attribution on its "
        f"reference, {top.window_share:.1%} in the window."
    )
    st.caption(
        "Each feature's share of the champion's total |attribution| on reference rows and on the "
        f"window's latest rows, the largest moves first. {report.attribution_note}"
    )
    frame = shift_frame(report.attribution_shift)
    long = frame.melt(id_vars="feature", value_vars=["reference share", "window share"], var_name="side")
    long["side"] = long["side"].str.removesuffix(" share")
    color = alt.Color("side:N", scale=alt.Scale(domain=[REFERENCE, WINDOW], range=["#1f77b4", "#ff7f0e"]))
    title = "Attribution share: reference and window"
    chart = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("value:Q", title="share of |attribution|", axis=alt.Axis(format="%")),
            y=alt.Y("feature:N", sort=list(frame["feature"]), title=None),
            yOffset="side:N",
            color=color,
            tooltip=["feature:N", "side:N", alt.Tooltip("value:Q", format=".1%")],
        )
        .properties(title=title, height=max(120, 36 * len(frame)))
    )
    st.altair_chart(chart, width="stretch", alt=title)
    st.dataframe(frame, hide_index=True, width="stretch")
