"""The console's Datasets page: what ingest holds and what cleaning made of each batch.

    Datasets          every dataset (target, task, declared or inferred schema, versions)
    Versions          a dataset's versions (parent, rows, batches, created, size)
    Batches           each batch's cleaning report (accepted, repaired, flagged, rejected,
                      duplicate, issues), those of the chosen version marked
    Rejected rows     a batch's rejected rows with their reasons and the values as received
    Feature profiles  the chosen version's profile of each feature, and histograms

Query parameters ?dataset=..&version=.. choose the dataset and version (the head by default),
and ?batch=.. the batch whose rejected rows are listed (the newest with any).
A page costs one call per section, however many versions a dataset has; reads are cached for a
few seconds per signed-in token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import altair as alt
import pandas as pd
import streamlit as st

from cascade.client.records import Batch, Dataset, DatasetVersion, FeatureProfile, RejectedRow
from cascade.console.connection import run, show_error, signed_in_token
from cascade.console.tables import markdown_literal
from cascade.errors import CascadeError

__all__ = ["render"]

# Histograms drawn at once by default; the profile table lists every feature.
DEFAULT_HISTOGRAMS = 4
REJECTED_SHOWN = 100
_FACET_WIDTH = 380
_CACHE_SECONDS = 5


def render() -> None:
    st.title("Datasets")
    token = signed_in_token()
    try:
        datasets = _datasets(token)
    except CascadeError as error:
        show_error(error, "Listing the datasets")
        return
    if not datasets:
        st.info("No datasets yet: upload a batch (`cascade ingest FILE DATASET`, or the SDK's upload).")
        return
    _datasets_table(datasets)
    dataset = _choose("Dataset", [d.dataset for d in datasets], "dataset", resets=("version", "batch"))
    if dataset is None:
        return
    try:
        versions, batches = _versions_and_batches(token, dataset)
    except CascadeError as error:
        show_error(error, f"Reading dataset {dataset}")
        return
    _versions_table(dataset, versions)
    version = _chosen_version(dataset, versions)
    _batches_table(batches, version)
    _rejected_rows(token, dataset, batches)
    if version is not None:
        _profiles(version)


# ---------------------------------------------------------------------- reads (cached)


@st.cache_data(ttl=_CACHE_SECONDS, show_spinner=False)
def _datasets(token: str) -> list[Dataset]:
    return run(lambda c: c.ingest.list_datasets())


@st.cache_data(ttl=_CACHE_SECONDS, show_spinner=False)
def _versions_and_batches(token: str, dataset: str) -> tuple[list[DatasetVersion], list[Batch]]:
    """Every version and every batch of a dataset: two list calls, made together."""
    return run(
        lambda c: asyncio.gather(c.ingest.list_dataset_versions(dataset), c.ingest.list_batches(dataset))
    )


@st.cache_data(ttl=_CACHE_SECONDS, show_spinner=False)
def _rejected(token: str, dataset: str, batch_id: str) -> list[RejectedRow]:
    return run(lambda c: c.ingest.list_rejected_rows(dataset, batch_id))


# ---------------------------------------------------------------------- choosing


def _choose(
    label: str,
    options: Sequence[str],
    param: str,
    *,
    within: str = "",
    default: str = "",
    resets: Sequence[str] = (),
) -> str | None:
    """A select box whose choice follows (and sets) the query parameter `param`; a new choice
    drops the parameters in `resets` (a version belongs to one dataset). `within` names what the
    options belong to, so each dataset's box keeps its own choice."""
    wanted = st.query_params.get(param, "") or default
    if wanted and wanted not in options:
        st.warning(f"No {label.lower()} {wanted!r} here; showing {options[0]!r}.")
        wanted = ""
    index = options.index(wanted) if wanted else 0
    chosen = st.selectbox(label, options, index=index, key=f"datasets_{param}_{within}")
    if chosen is not None and st.query_params.get(param) != chosen:
        if param in st.query_params:
            for stale in resets:
                st.query_params.pop(stale, None)
        st.query_params[param] = chosen
    return chosen


def _chosen_version(dataset: str, versions: list[DatasetVersion]) -> DatasetVersion | None:
    if not versions:
        st.info("This dataset has no version yet: every row of its batches was rejected or duplicate.")
        return None
    newest_first = [v.version for v in reversed(versions)]
    chosen = _choose("Version", newest_first, "version", within=dataset, default=newest_first[0])
    return next((v for v in versions if v.version == chosen), None)


# ---------------------------------------------------------------------- tables


def _datasets_table(datasets: list[Dataset]) -> None:
    st.subheader("All datasets")
    st.dataframe(
        pd.DataFrame(
            {
                "dataset": [d.dataset for d in datasets],
                "target": [d.target for d in datasets],
                "task": [d.task for d in datasets],
                "schema": ["declared" if d.declared else "inferred" for d in datasets],
                "versions": [d.versions for d in datasets],
                "head version": [d.head_version for d in datasets],
            }
        ),
        hide_index=True,
    )


def _versions_table(dataset: str, versions: list[DatasetVersion]) -> None:
    st.subheader(f"Versions of {dataset}")
    newest_first = list(reversed(versions))
    st.dataframe(
        pd.DataFrame(
            {
                # The counts first: the full ids (64 hex digits) would push them out of sight.
                "created": [v.created_at for v in newest_first],
                "rows": [v.rows for v in newest_first],
                "batches": [len(v.batch_ids) for v in newest_first],
                "size (KiB)": [round(v.size_bytes / 1024, 1) for v in newest_first],
                "version": [v.version for v in newest_first],
                "parent": [v.parent or "-" for v in newest_first],
            }
        ),
        hide_index=True,
    )


def _batches_table(batches: list[Batch], version: DatasetVersion | None) -> None:
    st.subheader("Batches")
    if not batches:
        st.info("No batches.")
        return
    in_version = set(version.batch_ids) if version is not None else set()
    newest_first = list(reversed(batches))
    st.caption(
        "Each batch's cleaning report; 'in version' marks the batches the chosen version holds."
        if version is not None
        else "Each batch's cleaning report."
    )
    st.dataframe(
        pd.DataFrame(
            {
                "batch": [b.batch_id for b in newest_first],
                "rows": [b.report.rows_received for b in newest_first],
                "accepted": [b.report.rows_accepted for b in newest_first],
                "repaired": [b.report.rows_repaired for b in newest_first],
                "flagged": [b.report.rows_flagged for b in newest_first],
                "rejected": [b.report.rows_rejected for b in newest_first],
                "duplicate": [b.report.rows_duplicate for b in newest_first],
                "issues": [_issues(b.report.issues) for b in newest_first],
                "in version": [b.batch_id in in_version for b in newest_first],
                "made version": [b.version[:12] or "none" for b in newest_first],
                "source": [b.source for b in newest_first],
                "received": [b.received_at for b in newest_first],
            }
        ),
        hide_index=True,
        # The ids are long: narrow, so the counts show without scrolling (the whole id on hover).
        column_config={"batch": st.column_config.TextColumn(width="medium")},
    )


def _issues(issues: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in sorted(issues.items())) or "-"


def _rejected_rows(token: str, dataset: str, batches: list[Batch]) -> None:
    st.subheader("Rejected rows")
    with_rejections = [b.batch_id for b in reversed(batches) if b.report.rows_rejected]
    if not with_rejections:
        st.caption("No batch of this dataset had a row rejected.")
        return
    batch_id = _choose("Batch", with_rejections, "batch", within=dataset)
    if batch_id is None:
        return
    try:
        rows = _rejected(token, dataset, batch_id)
    except CascadeError as error:
        show_error(error, f"Reading the rejected rows of batch {batch_id}")
        return
    if len(rows) > REJECTED_SHOWN:
        st.caption(f"The first {REJECTED_SHOWN} of {len(rows)} rejected rows.")
    shown = rows[:REJECTED_SHOWN]
    # A plain table, so every reason is readable text on the page (and in a browser test).
    st.table(
        pd.DataFrame(
            {
                "row": [str(r.row) for r in shown],
                "reason": [markdown_literal(r.reason) for r in shown],
                "values": [markdown_literal(_values(r.values_json)) for r in shown],
            }
        ),
        hide_index=True,
    )


def _values(values_json: str) -> str:
    """The row as received, compact (ingest stores it as JSON)."""
    try:
        values = json.loads(values_json) if values_json else {}
    except ValueError:
        return values_json
    if isinstance(values, dict):
        return ", ".join(f"{name}={value!r}" for name, value in values.items())
    return str(values)


# ---------------------------------------------------------------------- profiles


def _profiles(version: DatasetVersion) -> None:
    st.subheader(f"Feature profiles of {version.version}")
    if not version.profile:
        st.caption("This version has no feature profile.")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "feature": [p.name for p in version.profile],
                "type": [p.type for p in version.profile],
                "count": [p.count for p in version.profile],
                "missing rate": [p.missing_rate for p in version.profile],
                "mean": [p.mean for p in version.profile],
                "std": [p.std for p in version.profile],
                "min": [p.min for p in version.profile],
                "max": [p.max for p in version.profile],
            }
        ),
        hide_index=True,
    )
    names = [p.name for p in version.profile]
    chosen = st.multiselect(
        "Histograms of", names, default=names[:DEFAULT_HISTOGRAMS], key=f"histograms_{version.version}"
    )
    shown = [p for p in version.profile if p.name in chosen]
    # One faceted chart per kind rather than one per feature: each chart is a Vega view the
    # browser builds, and a page of many is slow to show.
    numeric = [p for p in shown if not p.categories and _binned(p)]
    categorical = [p for p in shown if p.categories]
    if numeric:
        _facets(_numeric_chart(numeric), numeric, "Histograms")
    if categorical:
        _facets(_categorical_chart(categorical), categorical, "Category counts")
    without = [p.name for p in shown if p not in numeric and p not in categorical]
    if without:
        st.caption(f"No histogram for {', '.join(without)}.")


def _binned(profile: FeatureProfile) -> bool:
    return (
        bool(profile.histogram_counts) and len(profile.histogram_edges) == len(profile.histogram_counts) + 1
    )


def _numeric_chart(profiles: list[FeatureProfile]) -> alt.Chart:
    frame = pd.DataFrame(
        [
            {"feature": _title(p), "from": start, "to": end, "rows": count}
            for p in profiles
            for start, end, count in zip(
                p.histogram_edges, p.histogram_edges[1:], p.histogram_counts, strict=False
            )
        ]
    )
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("from:Q", bin="binned", title=None),
            x2="to:Q",
            y=alt.Y("rows:Q", title="rows"),
            tooltip=["from:Q", "to:Q", "rows:Q"],
        )
    )
    return chart


def _categorical_chart(profiles: list[FeatureProfile]) -> alt.Chart:
    frame = pd.DataFrame(
        [
            {"feature": _title(p), "category": name, "rows": count}
            for p in profiles
            for name, count in p.categories.items()
        ]
    )
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("category:N", sort="-y", title=None),
            y=alt.Y("rows:Q", title="rows"),
            tooltip=["category:N", "rows:Q"],
        )
    )
    return chart


def _title(profile: FeatureProfile) -> str:
    return (
        f"{profile.name} (missing {profile.missing_rate:.1%}, mean {profile.mean:.4g}, std {profile.std:.4g})"
    )


def _facets(chart: alt.Chart, profiles: list[FeatureProfile], what: str) -> None:
    """`chart` drawn once per feature, two a row, each with its own scales, titled with the
    feature's name, missing rate, mean and std."""
    faceted = (
        chart.properties(width=_FACET_WIDTH, height=150)
        .facet(facet=alt.Facet("feature:N", title=None, sort=[_title(p) for p in profiles]), columns=2)
        .resolve_scale(x="independent", y="independent")
    )
    st.altair_chart(faceted, alt=f"{what} of {', '.join(p.name for p in profiles)}")
