"""The console's Playground page: one row in, the served model's answer out.

Choose a model (`?model=`) and a version (the champion, or any ready version serving has loaded),
fill one box per feature (prefilled with the medians of the dataset version it was trained on) or
paste a row as CSV or a JSON object, and Predict: the page shows the label, the probability of
each class and which version answered, then why: serving's explanation of that row by the version
that answered, as a waterfall from the base value through each feature's attribution (largest
first) to the output. A row that cannot be read is an error naming what is wrong.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from cascade.client.records import Explained, ModelVersion, VersionStatus
from cascade.client.sdk import AsyncClient
from cascade.client.serving import Prediction, ServedModel
from cascade.console.connection import run, show_error, signed_in_token
from cascade.errors import CascadeError, FailedPrecondition, NotFound, truncate

__all__ = ["RowError", "class_names", "parse_row", "render", "waterfall_chart", "waterfall_steps"]

CHAMPION = ""  # the version asked of serving for "whatever is champion"
RECENT_READY = 100  # ready versions offered besides the champion, newest first
ANSWER_KEY = "playground_answer"
SHOWN_MISSING = 5  # missing features named in an error; the rest are counted
MEDIAN = 2  # index of the median in a feature profile's quantiles (0.05, 0.25, 0.5, 0.75, 0.95)
WATERFALL_FEATURES = 12  # features drawn one by one in the waterfall; the rest as one step
_EFFECT_COLOURS = {"base": "#9e9e9e", "raises": "#d62728", "lowers": "#1f77b4", "output": "#444444"}


class RowError(ValueError):
    """A typed or pasted row the model cannot take; the message says why, for the user."""


# -- reading a row ---------------------------------------------------------------------------------
def parse_row(text: str, features: Sequence[str]) -> dict[str, float]:
    """One row from pasted text: a JSON object, or CSV (a header line naming the columns, or just
    the values in the model's feature order). Columns beyond the features (a target) are ignored."""
    text = text.strip()
    if not text:
        raise RowError("the pasted row is empty")
    if text.startswith(("{", "[")):
        try:
            loaded = json.loads(text)
        except ValueError as error:
            raise RowError(f"the pasted text is not valid JSON: {truncate(str(error), 200)}") from None
        if not isinstance(loaded, dict):
            raise RowError("paste one JSON object, {feature: value, ...}")
        return row_values({str(key): value for key, value in loaded.items()}, features)
    lines = [cells for cells in csv.reader(text.splitlines()) if any(cell.strip() for cell in cells)]
    if len(lines) == 1:
        values = lines[0]
        if len(values) != len(features):
            raise RowError(
                f"a row without a header needs {len(features)} values, one per feature in the model's "
                f"order ({', '.join(features)}); it has {len(values)}"
            )
        return row_values(dict(zip(features, values, strict=True)), features)
    if len(lines) == 2:
        header, values = lines
        if len(header) != len(values):
            raise RowError(f"the header names {len(header)} columns but the row has {len(values)} values")
        return row_values({name.strip(): value for name, value in zip(header, values, strict=True)}, features)
    raise RowError(f"paste one row (with or without a header line); the text has {len(lines)} lines")


def row_values(given: Mapping[str, Any], features: Sequence[str]) -> dict[str, float]:
    """Every feature's value as a finite number; a missing feature or a non-number is a RowError."""
    missing = [feature for feature in features if feature not in given]
    if missing:
        named = ", ".join(missing[:SHOWN_MISSING])
        more = f" and {len(missing) - SHOWN_MISSING} more" if len(missing) > SHOWN_MISSING else ""
        raise RowError(f"missing {len(missing)} of the model's {len(features)} features: {named}{more}")
    values: dict[str, float] = {}
    for feature in features:
        value = given[feature]
        number = _number(value)
        if number is None:
            raise RowError(f"feature {feature!r} needs a number; got {truncate(repr(value), 80)}")
        values[feature] = number
    return values


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def class_names(parity_reference: Mapping[str, Any], classes: int) -> list[str]:
    """The label of each probability column. A classifier's label is its most probable class, so
    the trainer's parity rows (their probabilities and labels) name the columns they saw; any
    other column keeps its position."""
    names = [f"class #{index}" for index in range(classes)]
    outputs, labels = parity_reference.get("outputs"), parity_reference.get("labels")
    if not isinstance(outputs, list) or not isinstance(labels, list):
        return names
    for probabilities, label in zip(outputs, labels, strict=False):
        if not isinstance(probabilities, list) or len(probabilities) != classes or not probabilities:
            continue
        first = label[0] if isinstance(label, list) and label else label
        if isinstance(first, int | float) and not isinstance(first, bool):
            names[int(np.argmax(probabilities))] = _label_text(first)
    return names


def _label_text(value: Any) -> str:
    """1.0 -> "1": labels travel as floats in the parity reference and as integers from serving."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


# -- reads, cached per signed-in token ---------------------------------------------------------------
@st.cache_data(ttl=15, show_spinner=False)
def _model_names(token: str) -> list[str]:
    return sorted(model.name for model in run(lambda c: c.registry.list_models()))


@st.cache_data(ttl=10, show_spinner=False)
def _champion_and_ready(token: str, model: str) -> tuple[int | None, list[int]]:
    """The champion's number and the newest ready versions (one search, not a call per version)."""

    async def read(c: AsyncClient) -> tuple[int | None, list[int]]:
        found = await c.registry.get_model(model)
        ready = await c.registry.search_versions(model, status=VersionStatus.ready, max_results=RECENT_READY)
        return found.aliases.get("champion"), [version.version for version in ready]

    return run(read)


@st.cache_data(ttl=10, show_spinner=False)
def _served(token: str, model: str, version: str) -> ServedModel:
    return run(lambda c: c.serving.model_metadata(model, version))


@st.cache_data(ttl=300, show_spinner=False)
def _version(token: str, model: str, number: int) -> ModelVersion:
    return run(lambda c: c.registry.get_version(model, number))


@st.cache_data(ttl=300, show_spinner=False)
def _medians(token: str, dataset: str, dataset_version: str) -> dict[str, float]:
    """Each feature's median in the dataset version (a typical row to start from)."""
    described = run(lambda c: c.ingest.get_dataset_version(dataset, dataset_version))
    medians: dict[str, float] = {}
    for profile in described.profile:
        value = profile.quantiles[MEDIAN] if len(profile.quantiles) > MEDIAN else profile.mean
        medians[profile.name] = float(value)
    return medians


# -- the page --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """The last prediction, kept across reruns of the page."""

    model: str
    asked: str
    prediction: Prediction
    names: list[str]
    # Serving's explanation of the row by the version that answered, or why there is none.
    explained: Explained | None = None
    values: tuple[float, ...] = ()
    explain_note: str = ""


def render() -> None:
    st.title("Playground")
    st.caption("Send one row to a served model and see its answer.")
    token = signed_in_token()
    try:
        models = _model_names(token)
    except CascadeError as error:
        show_error(error, "Listing models")
        return
    if not models:
        st.info("No models yet: upload a dataset (cascade ingest FILE) and its model appears here.")
        return
    pick_model, pick_version = st.columns(2)
    with pick_model:
        model = _choose_model(models)
    try:
        champion, ready = _champion_and_ready(token, model)
    except CascadeError as error:
        show_error(error, f"Reading the versions of {model}")
        return
    with pick_version:
        asked = _choose_version(model, champion, ready, _loaded_versions(token, model))
    try:
        served = _served(token, model, asked)
    except NotFound as error:
        st.warning(f"Serving does not answer for {model} {_describe(asked)}: {error}")
        return
    except CascadeError as error:
        show_error(error, f"Reading {model}'s inputs from serving")
        return
    if not served.features:
        st.warning(f"{model} does not name its features, so the playground cannot build a row for it.")
        return
    loaded = ", ".join(f"v{number}" for number in served.versions) or "none"
    st.caption(f"Serving has loaded {model} {loaded}.")
    number = int(asked) if asked else champion
    trained_on = _trained_on(token, model, number)
    form_side, answer_side = st.columns([3, 2], gap="large")
    with form_side:
        outcome = _row_form(model, asked, served, trained_on)
    if outcome is not None:  # a new answer, or an error that replaces the last answer
        st.session_state[ANSWER_KEY] = outcome
    shown = st.session_state.get(ANSWER_KEY)
    with answer_side:
        if isinstance(outcome, str):
            st.error(outcome)
        elif isinstance(shown, Answer) and shown.model == model and shown.asked == asked:
            _show(shown, served)
            show_explanation(shown)
        else:
            st.info("Fill in the features or paste a row, then press Predict: the answer shows here.")


def _choose_model(models: list[str]) -> str:
    wanted = st.query_params.get("model", "")
    index = models.index(wanted) if wanted in models else 0
    model = st.selectbox("Model", models, index=index, key="playground_model")
    if st.query_params.get("model") != model:
        st.query_params["model"] = model
    return str(model)


def _loaded_versions(token: str, model: str) -> set[str]:
    """The versions of `model` serving has loaded (what the champion's metadata lists)."""
    try:
        return set(_served(token, model, CHAMPION).versions)
    except CascadeError:
        return set()


def _choose_version(model: str, champion: int | None, ready: list[int], loaded: set[str]) -> str:
    """ "" (the champion) or a version number, as serving takes it."""
    options = [CHAMPION] + [str(number) for number in sorted(set(ready), reverse=True)]
    wanted = st.query_params.get("version", CHAMPION)
    if wanted not in options:
        wanted = CHAMPION

    def label(option: str) -> str:
        if option == CHAMPION:
            return f"champion (v{champion})" if champion is not None else "champion (none yet)"
        notes = ["champion"] if champion is not None and option == str(champion) else []
        notes.append("loaded" if option in loaded else "not loaded by serving")
        return f"v{option} ({', '.join(notes)})"

    chosen = st.selectbox(
        "Version",
        options,
        index=options.index(wanted),
        format_func=label,
        key=f"playground_version_{model}",
        help="The champion, or one of the newest ready versions (only versions serving has loaded answer).",
    )
    if chosen == CHAMPION:
        st.query_params.pop("version", None)
    elif st.query_params.get("version") != chosen:
        st.query_params["version"] = chosen
    return str(chosen)


def _describe(asked: str) -> str:
    return "as champion" if asked == CHAMPION else f"v{asked}"


def _trained_on(token: str, model: str, number: int | None) -> tuple[dict[str, float], dict[str, Any]]:
    """The medians of the version's training data, and its parity reference (for class names);
    empty when either cannot be read: the form then starts blank."""
    if number is None:
        return {}, {}
    try:
        version = _version(token, model, number)
    except CascadeError:
        return {}, {}
    try:
        reference = json.loads(version.tags.get("parity_reference", "{}"))
    except ValueError:
        reference = {}
    medians: dict[str, float] = {}
    if version.dataset:
        try:
            medians = _medians(token, version.dataset, version.dataset_version)
        except CascadeError as error:
            st.caption(f"No sample row: {error}")
    return medians, reference if isinstance(reference, dict) else {}


def _row_form(
    model: str, asked: str, served: ServedModel, trained_on: tuple[dict[str, float], dict[str, Any]]
) -> Answer | str | None:
    """The form; on Predict, the answer, or what went wrong as a message for the user."""
    medians, reference = trained_on
    features = served.features
    with st.form(f"playground_row_{model}_{asked}"):
        pasted = st.text_area(
            "Paste a row",
            key=f"playground_paste_{model}_{asked}",
            placeholder='CSV (a header line is optional) or a JSON object: {"' + features[0] + '": 1.5, ...}',
            help="When a row is pasted here, it is sent instead of the boxes below.",
        )
        submitted = st.form_submit_button("Predict", type="primary")
        st.markdown("**Features**" + (" (prefilled with the training data's medians)" if medians else ""))
        typed: dict[str, str] = {}
        columns = st.columns(2)
        for index, feature in enumerate(features):
            start = f"{medians[feature]:.6g}" if feature in medians else ""
            with columns[index % 2]:
                typed[feature] = st.text_input(
                    feature, value=start, key=f"playground_{model}_{asked}_{feature}"
                )
    if not submitted:
        return None
    try:
        values = parse_row(pasted, features) if pasted.strip() else row_values(typed, features)
    except RowError as error:
        return f"Cannot send this row: {error}"
    frame = pd.DataFrame([values], columns=list(features), dtype="float64")
    try:
        prediction = run(lambda c: c.serving.predict(model, frame, version=asked))
    except CascadeError as error:
        return f"Predicting with {model} {_describe(asked)}: {error}"
    probabilities = _probabilities(prediction, served)
    names = class_names(reference, probabilities.shape[0]) if probabilities is not None else []
    explained, note = _explain(model, prediction.version, frame)
    return Answer(
        model=model,
        asked=asked,
        prediction=prediction,
        names=names,
        explained=explained,
        values=tuple(values[feature] for feature in features),
        explain_note=note,
    )


def _explain(model: str, version: str, frame: pd.DataFrame) -> tuple[Explained | None, str]:
    """Serving's explanation of the row by the version that answered (asked by number, so a swap
    in between cannot make it another's), or a note saying why there is none."""
    try:
        with st.spinner("Explaining the answer..."):
            return run(lambda c: c.explain(model, frame, version=version)), ""
    except FailedPrecondition as error:  # e.g. a version without an explanation background
        return None, f"No explanation for this version: {error}"
    except CascadeError as error:
        return None, f"Explaining the answer failed: {error}"


def _probabilities(prediction: Prediction, served: ServedModel) -> np.ndarray | None:
    """The first row's class probabilities: a classifier's second output, [rows, classes]."""
    if len(served.outputs) < 2 or served.outputs[1].name not in prediction.outputs:
        return None
    second = prediction[served.outputs[1].name]
    return np.asarray(second[0], dtype=np.float64) if second.ndim == 2 and len(second) else None


def _show(answer: Answer, served: ServedModel) -> None:
    prediction = answer.prediction
    st.subheader("Prediction")
    first = prediction[served.outputs[0].name] if served.outputs else next(iter(prediction.outputs.values()))
    value = np.asarray(first).reshape(-1)[0]
    probabilities = _probabilities(prediction, served)
    kind = "Predicted label" if probabilities is not None else "Predicted value"
    left, right = st.columns(2)
    left.metric(kind, _label_text(value))
    right.metric("Answered by", f"v{prediction.version}")
    st.caption(f"{answer.model} v{prediction.version} answered ({_describe(answer.asked)} was asked).")
    if probabilities is None:
        return
    st.subheader("Probabilities")
    table = pd.DataFrame({"class": answer.names, "probability": probabilities})
    # A static table (a few rows): its cells are plain text, readable by a person and a test alike.
    st.table(table.assign(probability=table["probability"].map("{:.4f}".format)).set_index("class"))
    st.bar_chart(table, x="class", y="probability", horizontal=True)


def show_explanation(answer: Answer) -> None:
    """The waterfall of the answer's explanation: base value, each feature's push, output."""
    st.subheader("Why")
    if answer.explained is None:
        st.info(answer.explain_note or "No explanation.")
        return
    explained = answer.explained
    row = explained.rows[0]
    target = "the value" if row.class_index < 0 else f"class {row.class_label or row.class_index}"
    st.caption(
        f"How each feature moved the {explained.output_space} of {target} from the base value (the "
        f"model's mean over its training background) to this row's output: {row.base_value:.4g} + "
        f"{sum(row.attributions):.4g} = {row.output:.4g}. {explained.method.capitalize()} attributions "
        f"by v{explained.version}, {explained.evaluations} model evaluation"
        f"{'' if explained.evaluations == 1 else 's'} in {explained.seconds:.2f} s."
    )
    chart = waterfall_chart(explained, answer.values)
    st.altair_chart(chart, width="stretch", alt=f"Waterfall of the attributions of {answer.model}'s answer")


def waterfall_steps(
    explained: Explained, values: Sequence[float], top: int = WATERFALL_FEATURES
) -> pd.DataFrame:
    """One row per bar: the base value, the `top` features by |attribution| (the rest as one step),
    the output; each bar runs from `start` to `end`, a feature's from the running total before it."""
    row = explained.rows[0]
    order = sorted(range(len(explained.features)), key=lambda index: -abs(row.attributions[index]))
    steps = [("base value", 0.0, row.base_value, row.base_value, "base")]
    level = row.base_value
    for index in order[:top]:
        attribution = row.attributions[index]
        value = f" = {values[index]:.4g}" if index < len(values) else ""
        label = f"{explained.features[index]}{value}"
        steps.append(
            (label, level, level + attribution, attribution, "raises" if attribution >= 0 else "lowers")
        )
        level += attribution
    rest = order[top:]
    if rest:
        together = sum(row.attributions[index] for index in rest)
        effect = "raises" if together >= 0 else "lowers"
        steps.append((f"{len(rest)} other features", level, level + together, together, effect))
        level += together
    steps.append(("output", 0.0, row.output, row.output, "output"))
    return pd.DataFrame(steps, columns=["step", "start", "end", "amount", "effect"])


def waterfall_chart(explained: Explained, values: Sequence[float]) -> alt.Chart:
    steps = waterfall_steps(explained, values)
    chart: alt.Chart = (
        alt.Chart(steps, title="Attributions: base value -> each feature -> output")
        .mark_bar()
        .encode(
            y=alt.Y("step:N", sort=None, title=None, axis=alt.Axis(labelLimit=320)),
            x=alt.X("start:Q", title=explained.output_space),
            x2="end:Q",
            color=alt.Color(
                "effect:N",
                scale=alt.Scale(domain=list(_EFFECT_COLOURS), range=list(_EFFECT_COLOURS.values())),
                legend=alt.Legend(title=None, orient="bottom"),
            ),
            tooltip=["step", alt.Tooltip("amount:Q", format="+.4g"), alt.Tooltip("end:Q", format=".4g")],
        )
    )
    return chart
