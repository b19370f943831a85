"""The console's Lineage page: where a model version came from, and what else came from its data.

Backward from a version: its training run, the dataset version it was trained on, that version's
ancestors, and the raw batches each added with what cleaning made of them. Forward from the
dataset version: every model version trained on it. Drawn as a graph (graphviz DOT, rendered in
the browser) and listed as a table of the same facts.

Query parameters ?model=..&version=.. choose the version (the model's champion by default).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from cascade.client.records import Batch, DatasetVersion, Lineage, Model, ModelVersion
from cascade.console.connection import listing_with, run, show_error, signed_in_token
from cascade.console.tables import markdown_literal
from cascade.errors import CascadeError, NotFound

__all__ = ["LineageFacts", "dot", "facts_table", "render"]

# Dataset versions drawn behind the one trained on (a long history would drown the graph).
ANCESTORS_SHOWN = 4
_CACHE_SECONDS = 5


@dataclass(frozen=True)
class LineageFacts:
    """Everything the page draws: a version, its lineage, the dataset versions in it (newest
    first, the one trained on at the head), their batches, and per dataset version drawn the
    model versions trained on it (of every model)."""

    model: str
    version: ModelVersion
    lineage: Lineage
    dataset_versions: tuple[DatasetVersion, ...]
    older_versions: bool  # ancestors left out of the graph
    batches: tuple[Batch, ...]
    trained_on: dict[str, tuple[ModelVersion, ...]]

    def others(self) -> list[ModelVersion]:
        """The model versions trained on the drawn dataset versions, but the one chosen."""
        chosen = (self.version.model, self.version.version)
        return [
            v for versions in self.trained_on.values() for v in versions if (v.model, v.version) != chosen
        ]


def render() -> None:
    st.title("Lineage")
    token = signed_in_token()
    try:
        models = listing_with(_models, token, lambda m: m.name, st.query_params.get("model", ""))
    except CascadeError as error:
        show_error(error, "Listing the models")
        return
    if not models:
        st.info("No models yet: a model appears when its first version is trained.")
        return
    chosen = _choose_version(models)
    if chosen is None:
        return
    model, number = chosen
    try:
        facts = _facts(token, model, number)
    except CascadeError as error:
        show_error(error, f"Reading the lineage of {model} v{number}")
        return
    if facts.lineage.dataset_version:
        st.graphviz_chart(dot(facts))
    else:
        st.info(f"{model} v{number} was not trained on a dataset of this stack (an imported model).")
    st.subheader("Lineage facts")
    st.table(facts_table(facts).map(markdown_literal), hide_index=True)


# ---------------------------------------------------------------------- choosing


def _choose_version(models: list[Model]) -> tuple[str, int] | None:
    names = [m.name for m in models]
    wanted = st.query_params.get("model", "")
    if wanted and wanted not in names:
        st.warning(f"No model {wanted!r}; showing {names[0]!r}.")
        wanted = ""
    name = st.selectbox("Model", names, index=names.index(wanted) if wanted else 0, key="lineage_model")
    if name is None:
        return None
    model = next(m for m in models if m.name == name)
    if model.latest_version < 1:
        st.info(f"{name} has no version yet.")
        return None
    default = model.aliases.get("champion") or model.latest_version
    asked = st.query_params.get("version", "") if st.query_params.get("model", name) == name else ""
    if asked:
        try:
            default = int(asked.removeprefix("v"))
        except ValueError:
            st.warning(f"Version {asked!r} is not a number; showing v{default}.")
        if not 1 <= default <= model.latest_version:
            st.warning(f"{name} has versions 1 to {model.latest_version}, not {asked!r}.")
            default = min(max(default, 1), model.latest_version)
    number = int(
        st.number_input(
            "Version",
            min_value=1,
            max_value=model.latest_version,
            value=default,
            step=1,
            key=f"lineage_version_{name}",
            help="The champion's by default.",
        )
    )
    if st.query_params.get("model") != name or st.query_params.get("version") != str(number):
        st.query_params.update({"model": name, "version": str(number)})
    return name, number


# ---------------------------------------------------------------------- reads (cached)


@st.cache_data(ttl=_CACHE_SECONDS, show_spinner=False)
def _models(token: str) -> list[Model]:
    return run(lambda c: c.registry.list_models())


@st.cache_data(ttl=_CACHE_SECONDS, show_spinner=False)
def _facts(token: str, model: str, number: int) -> LineageFacts:
    lineage = run(lambda c: c.registry.lineage(model, number))
    dataset, trained_on = lineage.dataset, lineage.dataset_version
    if not trained_on:  # an imported version: no data of ours behind it
        return LineageFacts(model, lineage.version, lineage, (), False, (), {})
    # A bounded number of calls, however long the dataset's history (never the listing of all its
    # versions): the versions drawn, the batches of the one trained on (its whole lineage), and
    # per version drawn the model versions trained on it.
    shown, older = _ancestry(dataset, trained_on)
    names = [v.version for v in shown] or [trained_on]
    try:
        batches = run(lambda c: c.ingest.list_batches(dataset, trained_on))
    except NotFound:  # ingest forgot the data; the registry's facts are still worth drawing
        batches = []
    found = run(
        lambda c: asyncio.gather(*(c.registry.search_versions(dataset_version=name) for name in names))
    )
    return LineageFacts(
        model=model,
        version=lineage.version,
        lineage=lineage,
        dataset_versions=tuple(shown),
        older_versions=older,
        batches=tuple(b for b in batches if b.version in names),
        trained_on={name: tuple(reversed(versions)) for name, versions in zip(names, found, strict=True)},
    )


def _dataset_version(dataset: str, name: str) -> DatasetVersion:
    return run(lambda c: c.ingest.get_dataset_version(dataset, name))


def _ancestry(dataset: str, head: str) -> tuple[list[DatasetVersion], bool]:
    """`head` and up to ANCESTORS_SHOWN of its ancestors, newest first (none when ingest no
    longer has it), and whether older ones were left out."""
    chain: list[DatasetVersion] = []
    name = head
    while name and len(chain) <= ANCESTORS_SHOWN and name not in {v.version for v in chain}:
        try:
            found = _dataset_version(dataset, name)
        except NotFound:
            break
        chain.append(found)
        name = found.parent
    return chain, bool(name) and len(chain) > ANCESTORS_SHOWN


# ---------------------------------------------------------------------- the graph and the table


def _quote(text: str) -> str:
    """A DOT quoted string; a line break becomes DOT's centred one (\\n)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _version_label(version: ModelVersion) -> str:
    aliases = f" @{', @'.join(version.aliases)}" if version.aliases else ""
    return f"{version.model} v{version.version}{aliases}\n{version.status}"


def _short(dataset_version: str) -> str:
    return dataset_version[:12]


def _run_label(version: ModelVersion) -> str:
    return f"training run {version.run.run_id[:8] or 'unknown'}"


def _report(batch: Batch) -> str:
    """What cleaning made of a batch: accepted and rejected always, the rest when any."""
    report = batch.report
    parts = [f"{report.rows_accepted} accepted", f"{report.rows_rejected} rejected"]
    for count, what in (
        (report.rows_repaired, "repaired"),
        (report.rows_flagged, "flagged"),
        (report.rows_duplicate, "duplicate"),
    ):
        if count:
            parts.append(f"{count} {what}")
    return ", ".join(parts)


def dot(facts: LineageFacts) -> str:
    """The lineage as a graphviz DOT graph, data on the left flowing right into models."""
    version, lineage = facts.version, facts.lineage
    lines = [
        "digraph lineage {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="Helvetica", fontsize=11];',
        '  edge [color="#888888"];',
    ]

    def node(key: str, label: str, color: str = "#f5f5f5", bold: bool = False) -> None:
        pen = ", penwidth=2" if bold else ""
        lines.append(f"  {_quote(key)} [label={_quote(label)}, fillcolor={_quote(color)}{pen}];")

    def edge(source: str, target: str, label: str = "") -> None:
        text = f" [label={_quote(label)}]" if label else ""
        lines.append(f"  {_quote(source)} -> {_quote(target)}{text};")

    run_key = f"run:{version.run.run_id}"
    node(run_key, _run_label(version), "#fff3cd")
    trained_on = lineage.dataset_version
    dataset_keys = {v.version for v in facts.dataset_versions}
    if trained_on not in dataset_keys:  # ingest forgot it; the registry still names it
        node(f"dv:{trained_on}", f"{lineage.dataset}\ndataset version {_short(trained_on)}", "#d1ecf1", True)
    for dataset_version in facts.dataset_versions:
        key = f"dv:{dataset_version.version}"
        node(
            key,
            f"{dataset_version.dataset}\ndataset version {_short(dataset_version.version)}\n"
            f"{dataset_version.rows} rows",
            "#d1ecf1",
            bold=dataset_version.version == trained_on,
        )
        if dataset_version.parent and dataset_version.parent in dataset_keys:
            edge(f"dv:{dataset_version.parent}", key, "parent of")
    if facts.older_versions:
        oldest = facts.dataset_versions[-1]
        node("older", "older dataset versions", "#ffffff")
        edge("older", f"dv:{oldest.version}")
    for batch in facts.batches:
        key = f"batch:{batch.batch_id}"
        node(key, f"batch {_short(batch.batch_id)}\n{_report(batch)}", "#e2e3e5")
        edge(key, f"dv:{batch.version}", "added")
    edge(f"dv:{trained_on}", run_key, "trained on")
    model_key = f"mv:{version.model}:{version.version}"
    node(model_key, _version_label(version), "#d4edda", bold=True)
    edge(run_key, model_key, "produced")
    for other in facts.others():
        other_run = f"run:{other.run.run_id}"
        node(other_run, _run_label(other), "#fff3cd")
        edge(f"dv:{other.dataset_version}", other_run, "trained on")
        other_key = f"mv:{other.model}:{other.version}"
        node(other_key, _version_label(other), "#d4edda")
        edge(other_run, other_key, "produced")
    lines.append("}")
    return "\n".join(lines)


def facts_table(facts: LineageFacts) -> pd.DataFrame:
    """The graph's facts as rows: what, which, and the detail."""
    version, lineage = facts.version, facts.lineage
    rows: list[tuple[str, str, str]] = [
        ("model version", f"{version.model} v{version.version}", _version_detail(version)),
        ("training run", version.run.run_id or "none", _run_detail(version)),
        ("dataset version", lineage.dataset_version or "none", _dataset_detail(facts)),
        ("parent dataset version", lineage.parent_dataset_version or "none", "the version it grew from"),
    ]
    rows += [(f"batch (in {_short(b.version)})", b.batch_id, _report(b)) for b in facts.batches]
    if facts.older_versions:
        rows.append(
            ("older dataset versions", facts.dataset_versions[-1].parent, "its parent and older: not drawn")
        )
    rows += [
        (
            f"also trained on {_short(other.dataset_version)}",
            f"{other.model} v{other.version}",
            _version_detail(other),
        )
        for other in facts.others()
    ]
    return pd.DataFrame(rows, columns=["what", "which", "detail"])


def _version_detail(version: ModelVersion) -> str:
    aliases = f"; aliases {', '.join(version.aliases)}" if version.aliases else ""
    return f"{version.status}{aliases}"


def _run_detail(version: ModelVersion) -> str:
    metrics = ", ".join(f"{name} {value:.4g}" for name, value in sorted(version.run.metrics.items()))
    return f"{metrics or 'no metrics'}; trained in {version.run.train_seconds:.1f} s"


def _dataset_detail(facts: LineageFacts) -> str:
    if not facts.lineage.dataset_version:
        return "none: imported, not trained here"
    head = facts.dataset_versions[0] if facts.dataset_versions else None
    if head is None:
        return f"of {facts.lineage.dataset}; ingest no longer has it"
    batches = len(head.batch_ids)
    rows = f"; {head.rows} rows, {batches} batch{'' if batches == 1 else 'es'}"
    return f"of {facts.lineage.dataset}{rows}"
