"""`cascade ingest --follow`, `cascade train --follow` and `cascade models import --follow` on the
real stack tell how the cascade ended: the version served and how long it took, or the stage it
failed at with the failed gates and a non-zero exit code; `cascade models show` then says why there
is no champion.

A version fails validation cheaply on a small dataset: 30 rows leave fewer held-out rows than the
validator's `enough_fresh_rows` gate asks for (10), while the trainer can still train on them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner, Result

from cascade.cli.errors import EXIT_USAGE
from cascade.cli.main import app
from cascade.services.trainer.training import build_pipeline, export_onnx
from cascade.stack import Stack

pytestmark = pytest.mark.slow


def _frame() -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=7).reset_index(drop=True)


def _cascade(stack: Stack, *args: str) -> Result:
    return CliRunner().invoke(app, ["--home", str(stack.home), *args])


def test_ingest_follow_tells_the_served_version_and_a_repeat_upload_follows_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    batch = tmp_path / "batch.csv"
    _frame().iloc[:300].to_csv(batch, index=False)

    followed = _cascade(stack, "ingest", str(batch), "--dataset", "follow_ok", "--follow", "--timeout", "240")

    assert followed.exit_code == 0, followed.output
    lines = followed.output.splitlines()
    stages = [line.strip().split(" (")[0] for line in lines if line.startswith("  ") and " v1" in line]
    assert stages == ["trained v1", "validated v1: passed", "promoted v1 to champion", "serving v1"]
    assert lines[-1].startswith("Served follow_ok v1 after ") and lines[-1].endswith(" s.")

    again = _cascade(stack, "ingest", str(batch), "--dataset", "follow_ok", "--follow")

    assert again.exit_code == 0, again.output
    assert "already ingested before" in again.output
    assert again.output.splitlines()[-1] == "No new dataset version, so no cascade to follow."


def test_a_version_that_fails_validation_ends_ingest_and_train_follow_with_its_gates(
    stack: Stack, tmp_path: Path
) -> None:
    small = tmp_path / "small.csv"
    _frame().iloc[:30].to_csv(small, index=False)

    ingested = _cascade(
        stack, "ingest", str(small), "--dataset", "follow_bad", "--follow", "--timeout", "240"
    )

    assert ingested.exit_code == EXIT_USAGE, ingested.output
    assert "  validated v1: FAILED" in ingested.output
    assert "    enough_fresh_rows failed: " in ingested.output
    assert "Error: follow_bad v1 failed validation: enough_fresh_rows failed" in ingested.output
    assert "Served" not in ingested.output

    # A retrain on the same rows registers a new version (no champion to be byte-equal to), which
    # fails the same gate: followed past the trainer's "registered version 2" to its verdict.
    trained = _cascade(stack, "train", "follow_bad", "--follow", "--timeout", "240")

    assert trained.exit_code == EXIT_USAGE, trained.output
    assert "finished: registered version 2" in trained.output
    assert "  validated v2: FAILED" in trained.output
    assert "Error: follow_bad v2 failed validation: enough_fresh_rows failed" in trained.output

    shown = _cascade(stack, "models", "show", "follow_bad")

    assert shown.exit_code == 0, shown.output
    assert "No champion: v2 failed validation: enough_fresh_rows failed" in shown.output
    assert max(len(line) for line in shown.output.splitlines()) <= 160


def test_train_follow_of_an_unchanged_model_says_no_new_version(stack: Stack, tmp_path: Path) -> None:
    batch = tmp_path / "batch.csv"
    _frame().iloc[:200].to_csv(batch, index=False)
    first = _cascade(stack, "ingest", str(batch), "--dataset", "follow_same", "--follow", "--timeout", "240")
    assert first.exit_code == 0, first.output

    # Same rows, same spec and seed: the champion's artifact byte for byte, so nothing to validate.
    trained = _cascade(stack, "train", "follow_same", "--follow", "--timeout", "240")

    assert trained.exit_code == 0, trained.output
    assert trained.output.splitlines()[-1] == (
        "No new version: the run reproduced follow_same v1 byte for byte; v1 stays."
    )


def test_import_follow_of_a_model_that_fails_validation_exits_with_its_gates(
    stack: Stack, tmp_path: Path
) -> None:
    frame = _frame().iloc[:300]
    reference = tmp_path / "reference.csv"
    frame.to_csv(reference, index=False)
    # Trained on inverted labels: wrong on nearly every row, far under the accuracy floor.
    pipeline = build_pipeline("logistic_regression", "classification", {}, seed=0)
    pipeline.fit(frame.drop(columns="target").to_numpy(np.float32), 1 - frame["target"].to_numpy())
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(export_onnx(pipeline, 30, "classification"))

    result = _cascade(
        stack, "models", "import", "follow_import", str(model_file), "--reference-file", str(reference),
        "--follow", "--timeout", "240",
    )  # fmt: skip

    assert result.exit_code == EXIT_USAGE, result.output
    assert "FAILED validation (" in result.output
    assert re.search(r"Error: follow_import v\d+ failed validation: .*min_accuracy failed", result.output)
