"""The pure parts of the console's data pages: the lineage graph (DOT) and its table, table cells
that Markdown leaves as they are, and a trace laid out for the waterfall chart."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pandas as pd

from cascade.client.records import (
    Batch,
    BatchReport,
    DatasetVersion,
    Lineage,
    ModelVersion,
    TrainingRun,
)
from cascade.console.tables import markdown_literal
from cascade.console.views.lineage import LineageFacts, dot, facts_table
from cascade.console.views.traces import timeline_frame
from cascade.traces import find_trace, load_spans
from tests.records import model_version
from tests.shared.test_traces import write_cascade

FIRST, SECOND = "a" * 64, "b" * 64  # dataset versions: SECOND grew from FIRST


def _version(model: str, number: int, dataset_version: str, aliases: tuple[str, ...] = ()) -> ModelVersion:
    return model_version(
        model=model,
        version=number,
        dataset_version=dataset_version,
        run=TrainingRun(f"run{number}-{model}", {}, {"cv_accuracy": 0.97}, 0, 1.5, ""),
        aliases=aliases,
    )


def _dataset_version(name: str, parent: str, batch_ids: tuple[str, ...], rows: int) -> DatasetVersion:
    return DatasetVersion(
        "cancer", name, parent, batch_ids, rows, "target", (), "classification", (), None, 0, ()
    )


def _batch(batch_id: str, version: str, accepted: int, rejected: int) -> Batch:
    report = BatchReport(accepted + rejected, accepted, rejected, 0, 0, 0, (), {})
    return Batch(batch_id, version, "test", None, report)


def _facts() -> LineageFacts:
    chosen = _version("cancer", 2, SECOND, ("champion",))
    first_model = _version("cancer", 1, FIRST)
    other_model = _version('other "quoted"', 7, SECOND)
    return LineageFacts(
        model="cancer",
        version=chosen,
        lineage=Lineage(chosen, "cancer", SECOND, FIRST, ("batch-one", "batch-two")),
        dataset_versions=(
            _dataset_version(SECOND, FIRST, ("batch-one", "batch-two"), 767),
            _dataset_version(FIRST, "", ("batch-one",), 567),
        ),
        older_versions=False,
        batches=(_batch("batch-one", FIRST, 567, 2), _batch("batch-two", SECOND, 200, 0)),
        trained_on={SECOND: (chosen, other_model), FIRST: (first_model,)},
    )


def _labels(graph: str) -> dict[str, str]:
    """Node key -> label of every node statement of a DOT graph."""
    found = re.findall(r'^  "((?:[^"\\]|\\.)*)" \[label="((?:[^"\\]|\\.)*)"', graph, re.MULTILINE)
    return {key: label.replace('\\"', '"') for key, label in found}


def _edges(graph: str) -> set[tuple[str, str]]:
    return set(re.findall(r'^  "((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)"', graph, re.MULTILINE))


def test_the_graph_runs_from_batches_through_dataset_versions_and_runs_to_model_versions() -> None:
    graph = dot(_facts())
    labels = _labels(graph)
    assert labels[f"dv:{SECOND}"] == f"cancer\\ndataset version {SECOND[:12]}\\n767 rows"
    assert labels["batch:batch-one"] == "batch batch-one\\n567 accepted, 2 rejected"
    assert labels["mv:cancer:2"] == "cancer v2 @champion\\nready"
    assert labels["run:run2-cancer"] == "training run run2-can"
    edges = _edges(graph)
    assert {
        ("batch:batch-one", f"dv:{FIRST}"),  # each batch goes into the version it made
        ("batch:batch-two", f"dv:{SECOND}"),
        (f"dv:{FIRST}", f"dv:{SECOND}"),  # parent to child
        (f"dv:{SECOND}", "run:run2-cancer"),
        ("run:run2-cancer", "mv:cancer:2"),
        (f"dv:{FIRST}", "run:run1-cancer"),  # forward: what else was trained on the data drawn
        ("run:run1-cancer", "mv:cancer:1"),
    } <= edges
    # A name with a quote stays one node with the name intact.
    assert labels['mv:other \\"quoted\\":7'] == 'other "quoted" v7\\nready'
    assert graph.startswith("digraph lineage {") and graph.endswith("}")
    assert "older" not in labels
    cut_short = _labels(dot(replace(_facts(), older_versions=True)))
    assert cut_short["older"] == "older dataset versions"


def test_the_table_holds_the_graphs_facts_in_full() -> None:
    table = facts_table(_facts())
    rows = list(table.itertuples(index=False, name=None))
    assert rows[:4] == [
        ("model version", "cancer v2", "ready; aliases champion"),
        ("training run", "run2-cancer", "cv_accuracy 0.97; trained in 1.5 s"),
        ("dataset version", SECOND, "of cancer; 767 rows, 2 batches"),
        ("parent dataset version", FIRST, "the version it grew from"),
    ]
    assert ("batch (in aaaaaaaaaaaa)", "batch-one", "567 accepted, 2 rejected") in rows
    assert [row[1] for row in rows if row[0].startswith("also trained on")] == [
        'other "quoted" v7',
        "cancer v1",
    ]


def test_markdown_literal_escapes_what_markdown_would_change_and_nothing_else() -> None:
    for text in ["-", "mean radius: not a number ('abc')", "**bold** [link](x) $x$ :red[no] `code`"]:
        escaped = markdown_literal(text)
        assert re.sub(r"\\(.)", r"\1", escaped) == text  # Markdown's unescaping gives it back
        assert not re.search(r"(?<!\\)[*\[\]$`:-]", escaped)
    assert markdown_literal("plain words 42") == "plain words 42"


def test_a_trace_is_laid_out_for_the_waterfall_chart_in_tree_order(tmp_path: Path) -> None:
    trace_id = write_cascade(tmp_path)
    frame = timeline_frame(find_trace(load_spans(tmp_path), trace_id))
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["service"]) == ["cascade-ingest", "cascade-ingest", "cascade-trainer"]
    assert [label.split(" ", 1)[1].strip("\u00a0 ") for label in frame["span"].str.strip()] == [
        "UploadBatch (server)",
        "data-arrived publish (producer)",
        "data-arrived process (consumer)",
    ]
    assert frame["span"].str.count("\u00a0").tolist() == [0, 2, 4]  # indented by depth
    assert (frame["end (s)"] >= frame["start (s)"]).all() and frame["start (s)"].iloc[0] == 0
