"""Every verb of `cascade models`, `datasets`, `spec`, `monitor` and `train` given a model or dataset
the stack does not know ends with exit code 3 (NOT_FOUND) and one line on stderr, on the real stack.

Verbs that create what they name are not in the list: `models register`, `datasets register`,
`spec set` (a spec may be set before the model's first batch), `ingest` (a first batch makes its
dataset); `models list` and `datasets list` name nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from cascade.cli.errors import EXIT_NOT_FOUND
from cascade.cli.main import app
from cascade.services.trainer.training import build_pipeline, export_onnx
from cascade.stack import Stack

pytestmark = pytest.mark.slow

VERBS = [
    ["models", "show", "ghost"],
    ["models", "show", "ghost/1"],
    ["models", "show", "ghost@champion"],
    ["models", "search", "ghost"],
    ["models", "history", "ghost"],
    ["models", "lineage", "ghost"],
    ["models", "lineage", "ghost/1"],
    ["models", "tag", "ghost", "k=v"],
    ["models", "tag", "ghost/1", "k=v"],
    ["models", "describe", "ghost", "words"],
    ["models", "describe", "ghost/1", "words"],
    ["models", "policy", "ghost", "manual"],
    ["models", "promote", "ghost", "1"],
    ["models", "alias", "ghost", "canary", "1"],
    ["models", "unalias", "ghost", "canary"],
    ["models", "rollback", "ghost"],
    ["models", "traffic", "ghost"],
    ["models", "canary", "ghost", "1", "--percent", "5"],
    ["models", "shadow", "ghost", "1", "--percent", "5"],
    ["models", "rollout", "ghost"],
    ["models", "rollout", "ghost", "1"],
    ["models", "rollout", "ghost", "--abort", "--reason", "r"],
    ["models", "import", "ghost", "{model}", "--reference", "ghost_dataset"],
    ["datasets", "show", "ghost"],
    ["spec", "show", "ghost"],
    ["spec", "show", "ghost", "--version", "2"],
    ["monitor", "ghost"],
    ["train", "ghost"],
    ["train", "ghost", "--follow", "--timeout", "30"],
]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = load_breast_cancer(as_frame=True).frame
    pipeline = build_pipeline("logistic_regression", "classification", {}, seed=0)
    pipeline.fit(frame.drop(columns="target").to_numpy(np.float32), frame["target"])
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    path.write_bytes(export_onnx(pipeline, 30, "classification"))
    return path


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_an_unknown_name_exits_not_found_on_every_verb(
    stack: Stack, onnx_file: Path, verb: list[str]
) -> None:
    args = [part.format(model=onnx_file) for part in verb]

    result = CliRunner().invoke(app, ["--home", str(stack.home), *args])

    assert result.exit_code == EXIT_NOT_FOUND, result.output
    assert "ghost" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
