"""The console's Drift page: for one model (/drift?model=NAME), the monitor's latest report on its
champion (does the window drift, of how many predictions, against which reference), per feature and
for the prediction the test's score against its threshold over the model's history of verdicts and
the reference and window distributions overlaid on the test's own bins, which features the
champion's attributions moved to or from in a drifted window (drift explained), the champion's performance
(measured from labels, and the label-free ESTIMATE), and the drift events with what they triggered.

Everything comes from two monitor calls (the report and the history), cached briefly; a model the
monitor has not reported on yet is a note, not an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import altair as alt
import pandas as pd
import streamlit as st

from cascade.client.monitor import DriftHistory, Verdict
from cascade.client.records import DriftReport, FeatureDrift, Model, Performance
from cascade.console.connection import listing_with, run, show_error, signed_in_token
from cascade.console.views import attribution
from cascade.errors import CascadeError, NotFound

_TTL = 5
HISTORY = 200  # verdicts drawn over time
REFERENCE, WINDOW = "reference", "window"
CALM_FEATURE = "Draw a feature that did not drift"


def render() -> None:
    st.title("Drift")
    try:
        models = listing_with(_models, signed_in_token(), lambda m: m.name, st.query_params.get("model", ""))
    except CascadeError as error:
        show_error(error, "Listing the models")
        return
    if not models:
        st.info("No models yet: the monitor reports on a model once its champion serves predictions.")
        return
    model = _chosen([m.name for m in models])
    try:
        report, history = _drift(signed_in_token(), model)
    except CascadeError as error:
        show_error(error, f"Reading the drift of {model}")
        return
    if report is None:
        st.info(
            f"The monitor has no drift report for {model} yet: it reports once the champion has "
            "answered enough predictions (and only models with a reference dataset are monitored)."
        )
        _events(history)
        return
    _summary(report)
    _features(report, history)
    _prediction(report, history)
    attribution.render_shift(report)
    _performance(report.performance)
    _events(history)


# ---------------------------------------------------------------------- reads (cached briefly)


@st.cache_data(ttl=_TTL, show_spinner=False)
def _models(token: str) -> list[Model]:
    del token  # part of the cache key only: what a user may read depends on who they are
    return run(lambda client: client.registry.list_models())


@st.cache_data(ttl=_TTL, show_spinner=False)
def _report(token: str, model: str) -> DriftReport:
    """The latest report; NotFound (never cached, so a report that just came is seen) when none."""
    del token
    return run(lambda client: client.monitor.drift_report(model))


@st.cache_data(ttl=_TTL, show_spinner=False)
def _history(token: str, model: str, latest: datetime | None) -> DriftHistory:
    """The history up to the `latest` report at least: keyed by it, so it is never older."""
    del token, latest
    return run(lambda client: client.monitor.drift_history(model, HISTORY))


def _drift(token: str, model: str) -> tuple[DriftReport | None, DriftHistory]:
    """The latest report (None when the monitor has none yet) and the history."""
    try:
        report: DriftReport | None = _report(token, model)
    except NotFound:
        report = None
    return report, _history(token, model, report.computed_at if report is not None else None)


def _chosen(names: list[str]) -> str:
    """The model named by ?model=, else the first; choosing another updates the query parameter."""
    asked = st.query_params.get("model", "")
    if asked and asked not in names:
        st.warning(f"No model named {asked!r}; showing {names[0]}.")
    index = names.index(asked) if asked in names else 0
    name = st.selectbox("Model", names, index=index, key=f"drift_model_{asked}")
    if name != asked:
        st.query_params["model"] = name
    return str(name)


# ---------------------------------------------------------------------- the report


def _summary(report: DriftReport) -> None:
    st.subheader(f"{report.model} v{report.model_version}: latest report")
    drifted, window, seen, reference = st.columns(4)
    drifted.metric("Dataset drifted", "YES" if report.dataset_drifted else "no")
    window.metric("Window size", f"{report.window_size:,}")
    seen.metric("Predictions seen", f"{report.predictions_seen:,}")
    reference.metric("Reference dataset version", report.reference_dataset_version[:12] or "-")
    names = report.drifted_features
    st.caption(
        f"Computed {_when(report.computed_at)} over the latest {report.window_size} predictions of "
        f"v{report.model_version}, against the {report.reference_rows:,} rows it was trained on "
        f"({report.reference_dataset_version}). "
        + (f"Drifted: {', '.join(names)}." if names else "No feature drifted.")
        + (
            f" The champion's attribution moved most in {report.attribution_shift[0].feature}."
            if report.attribution_shift
            else ""
        )
    )
    rows = [
        _row(feature) for feature in [*report.features, *([report.prediction] if report.prediction else [])]
    ]
    st.markdown("**Tests in the latest window**")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=_rows_height(len(rows)))


def _row(feature: FeatureDrift) -> dict[str, object]:
    return {
        "feature": feature.feature,
        "test": feature.test,
        "statistic": _number(feature.statistic),
        "p-value": _number(feature.p_value),
        "threshold": _number(feature.threshold),
        "drifted": "DRIFTED" if feature.drifted else "no",
    }


def _features(report: DriftReport, history: DriftHistory) -> None:
    st.subheader("Features")
    st.caption(
        "Per feature: the test's score in each past report against its threshold (a p-value drifts "
        "below it, a statistic above it), and the reference's and the latest window's shares of rows "
        "on the bins the test counts in. Every drifted feature is drawn; any other on demand (each "
        "chart costs the browser, and a model may have hundreds of features)."
    )
    verdicts = _oldest_first(history.verdicts)
    if verdicts and not any(verdict.features for verdict in verdicts):
        st.caption("The stored verdicts predate per-feature statistics: only the latest report is drawn.")

    def panel(feature: FeatureDrift) -> None:
        _feature_panel(
            feature, [(verdict, _named(verdict.features, feature.feature)) for verdict in verdicts]
        )

    for feature in report.features:
        if feature.drifted:
            panel(feature)
    calm = [feature for feature in report.features if not feature.drifted]
    if not calm:
        return
    chosen = st.selectbox(
        CALM_FEATURE,
        [feature.feature for feature in calm],
        index=None,
        placeholder=f"{len(calm)} features did not drift: choose one to draw it",
        key=f"drift_calm_{report.model}",
    )
    if chosen is not None:
        panel(next(feature for feature in calm if feature.feature == chosen))


def _prediction(report: DriftReport, history: DriftHistory) -> None:
    st.subheader("Prediction drift")
    if report.prediction is None:
        st.caption(
            "No prediction test: serving logged no predictions with the inputs, or the champion's "
            "outputs on its reference could not be computed."
        )
        return
    st.caption("The champion's predictions in the window against its own predictions on its reference rows.")
    past = [(verdict, verdict.prediction) for verdict in _oldest_first(history.verdicts)]
    _feature_panel(report.prediction, past)


def _feature_panel(feature: FeatureDrift, past: Sequence[tuple[Verdict, FeatureDrift | None]]) -> None:
    marker = "DRIFTED" if feature.drifted else "no drift"
    label = f"{feature.feature}: {marker} ({feature.test})"
    with st.expander(label, expanded=True):
        over_time, shares = st.columns(2)
        with over_time:
            _score_chart(feature, past)
        with shares:
            _distribution_chart(feature)


def _score_chart(feature: FeatureDrift, past: Sequence[tuple[Verdict, FeatureDrift | None]]) -> None:
    """The feature's score in each past verdict that carries its test, against the threshold."""
    what = "p-value" if feature.drifts_below else "statistic"
    points = [
        {
            "computed at": verdict.computed_at.replace(tzinfo=None),  # drawn as UTC, as labelled
            "version": f"v{verdict.model_version}",
            what: score,
            "threshold": _finite(test.threshold),
            "drifted": test.drifted,
        }
        for verdict, test in past
        if verdict.computed_at is not None and test is not None and (score := _finite(test.score)) is not None
    ]
    title = f"Statistic over time: {feature.feature}"
    if not points:
        st.caption(f"{title}: no past verdict carries this test yet.")
        return
    frame = pd.DataFrame(points)
    scale = alt.Scale(type="log") if feature.drifts_below else alt.Scale(zero=True)
    if feature.drifts_below:  # p-values span decades: a log axis, with zero shown as the smallest
        frame[what] = frame[what].clip(lower=1e-16)
    line = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("computed at:T", title="report (UTC)", axis=alt.Axis(format="%H:%M:%S", tickCount=5)),
            y=alt.Y(f"{what}:Q", title=what, scale=scale),
            tooltip=["computed at:T", "version:N", f"{what}:Q", "threshold:Q", "drifted:N"],
        )
    )
    layers: list[alt.Chart] = [line]
    threshold = _finite(feature.threshold)
    if threshold is not None and (threshold > 0 or not feature.drifts_below):
        rule = alt.Chart(pd.DataFrame({"threshold": [threshold]}))
        layers.append(rule.mark_rule(color="#d62728", strokeDash=[6, 4]).encode(y="threshold:Q"))
    chart = alt.layer(*layers).properties(title=title, height=220)
    st.altair_chart(chart, width="stretch", alt=title)
    direction = "below" if feature.drifts_below else "above"
    st.caption(
        f"{feature.test}: drifts when the {what} is {direction} the threshold "
        f"(dashed, {_number(feature.threshold)} in the latest window)."
    )


def _distribution_chart(feature: FeatureDrift) -> None:
    title = f"Distribution: {feature.feature}"
    reference, window = feature.reference_frequencies, feature.window_frequencies
    if not reference or len(reference) != len(window):
        st.caption(f"{title}: the monitor sent no distributions for this test.")
        return
    sides = [(REFERENCE, reference), (WINDOW, window)]
    color = alt.Color("side:N", scale=alt.Scale(domain=[REFERENCE, WINDOW], range=["#1f77b4", "#ff7f0e"]))
    if len(feature.bin_edges) == len(reference) + 1:
        edges = feature.bin_edges
        frame = pd.DataFrame(
            [
                {"side": side, "from": edges[i], "to": edges[i + 1], "share": share}
                for side, shares in sides
                for i, share in enumerate(shares)
            ]
        )
        chart = (
            alt.Chart(frame)
            .mark_bar(opacity=0.5, binSpacing=0)
            .encode(
                x=alt.X("from:Q", bin="binned", title=feature.feature),
                x2="to:Q",
                y=alt.Y("share:Q", title="share of rows", stack=None),
                color=color,
                tooltip=["side:N", "from:Q", "to:Q", alt.Tooltip("share:Q", format=".1%")],
            )
        )
    else:
        names = list(feature.categories) or [str(i) for i in range(len(reference))]
        frame = pd.DataFrame(
            [
                {"side": side, "category": names[i], "share": share}
                for side, shares in sides
                for i, share in enumerate(shares)
            ]
        )
        chart = (
            alt.Chart(frame)
            .mark_bar()
            .encode(
                x=alt.X("category:N", sort=names, title=feature.feature, axis=alt.Axis(labelAngle=0)),
                xOffset="side:N",
                y=alt.Y("share:Q", title="share of rows"),
                color=color,
                tooltip=["side:N", "category:N", alt.Tooltip("share:Q", format=".1%")],
            )
        )
    st.altair_chart(chart.properties(title=title, height=220), width="stretch", alt=title)
    st.caption("Reference (training rows) and the latest window, each as shares of its own rows.")


# ---------------------------------------------------------------------- performance and events


def _performance(performance: Performance | None) -> None:
    st.subheader("Performance")
    if performance is None:
        st.caption("No performance yet: no labels joined, and serving logged no predicted probabilities.")
        return
    measured, champion, estimated = st.columns(3)
    if performance.value is not None:
        delta = (
            performance.value - performance.champion_value if performance.champion_value is not None else None
        )
        measured.metric(
            f"Measured {performance.metric}",
            f"{performance.value:.4f}",
            delta=None if delta is None else f"{delta:+.4f} vs champion",
        )
    else:
        measured.metric(f"Measured {performance.metric}", "no labels yet")
    champion.metric(
        f"Champion's {performance.metric} at validation",
        "-" if performance.champion_value is None else f"{performance.champion_value:.4f}",
    )
    estimated.metric(
        "Estimated accuracy (ESTIMATE)",
        "-" if performance.estimated_accuracy is None else f"{performance.estimated_accuracy:.4f}",
    )
    st.caption(
        f"Measured on {performance.labelled_rows:,} labelled predictions; it decays when more than "
        f"{_number(performance.threshold)} below the champion's validation value"
        + (": DECAYED." if performance.decayed else ".")
    )
    st.caption(f"ESTIMATE, not a measurement: {performance.estimate_note or 'no note'}")


def _events(history: DriftHistory) -> None:
    st.subheader("Drift events")
    if not history.drift_events:
        st.caption("No drift events: the rule (drift in several reports in a row, or decay) has not fired.")
        return
    st.caption(
        "Each time the rule fired: emitted as *drift detected* (the loop acts on it), or held back "
        "(within the cooldown, or a model not retrained automatically), and what it triggered."
    )
    rows = [
        {
            "time": _when(event.emitted_at),
            "kind": event.kind,
            "version": f"v{event.model_version}",
            "emitted": "yes" if event.emitted else "held back",
            "triggered": event.triggered or "-",
            "summary": event.summary,
        }
        for event in history.drift_events
    ]
    st.table(pd.DataFrame(rows), hide_index=True)  # a table wraps the long texts


# ---------------------------------------------------------------------- helpers


def _oldest_first(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return list(reversed(verdicts))  # the monitor sends the newest first


def _named(features: Sequence[FeatureDrift], name: str) -> FeatureDrift | None:
    return next((feature for feature in features if feature.feature == name), None)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def _rows_height(rows: int) -> int:
    """A table tall enough for all its rows (Streamlit's rows are 35 px)."""
    return 35 * (rows + 1) + 3


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"
