"""`cascade explain` against the real stack: a model trained by the cascade is explained by the
serving process that serves it, the attributions add up to the output (base + sum within 1e-6),
and that output is serving's own prediction for the row (asked through tritonclient, unchanged);
an unknown model exits 3."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from cascade import Client
from cascade.cli.main import app
from cascade.stack import SERVICES, Stack
from tests.integration.support import infer

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODEL = "explain_cli"
BACKGROUND_TAG = "explain_background"


def _served_champion(stack: Stack) -> tuple[int, list[str], np.ndarray]:
    """MODEL trained and served: (champion version, its features, rows it did not train on)."""
    frame = load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=17).reset_index(drop=True)
    features = [str(column) for column in frame.columns if column != "target"]
    addresses = {name: stack.address(name) for name in SERVICES}
    with Client(addresses, security=stack.client_security) as client:
        upload = client.upload(frame.iloc[:400], MODEL)
        version = client.follow(upload.dataset_version, MODEL, wait_seconds=240)
    # The trainer samples the background from the training rows, in the model's feature order.
    background = json.loads(version.tags[BACKGROUND_TAG])
    assert background["features"] == features and 0 < len(background["rows"]) <= 100
    return version.version, features, frame.iloc[450:453][features].to_numpy(np.float64)


def test_cascade_explain_adds_up_to_serving_s_prediction(stack: Stack) -> None:
    version, features, rows = _served_champion(stack)
    runner = CliRunner()
    row = rows[0]

    result = runner.invoke(
        app,
        [
            "--home",
            str(stack.home),
            "explain",
            MODEL,
            "--row",
            ",".join(repr(float(v)) for v in row),
            "--json",
        ],
    )

    assert result.exit_code == 0, result.output
    explained = json.loads(result.output)
    assert (explained["model"], explained["version"]) == (MODEL, version)
    assert explained["features"] == features
    [attributed] = explained["rows"]
    attributions = attributed["attributions"]
    assert list(attributions) == features
    assert abs(attributed["base_value"] + sum(attributions.values()) - attributed["output"]) <= 1e-6
    # The explained output is serving's answer for this row: its label's probability (or log-odds).
    served_version, labels = infer(stack, MODEL, row.reshape(1, -1).astype(np.float32))
    _, probabilities = infer(stack, MODEL, row.reshape(1, -1).astype(np.float32), output="probabilities")
    assert served_version == str(version)
    label = int(labels.reshape(-1)[0])
    assert attributed["class_index"] == label
    probability = float(probabilities[0, label])
    if explained["output_space"] == "probability":
        assert attributed["output"] == pytest.approx(probability, abs=1e-5)
    else:
        assert explained["output_space"] == "margin"
        # Compared as a probability: a confident boosted model's float32 probability can be exactly
        # 1.0, whose log-odds are infinite.
        assert 1 / (1 + np.exp(-attributed["output"])) == pytest.approx(probability, abs=1e-5)

    # The same row by name (--row-json), for the other class, read by a person: the top 5 features
    # by |attribution|, the rest summed, and the output as base + sum.
    other = 1 - label
    named = json.dumps(dict(zip(features, map(float, row), strict=True)))
    readable = runner.invoke(
        app,
        [
            "--home",
            str(stack.home),
            "explain",
            MODEL,
            "--row-json",
            named,
            "--class",
            str(other),
            "--top",
            "5",
        ],
    )

    assert readable.exit_code == 0, readable.output
    lines = readable.output.splitlines()
    assert lines[0].startswith(f"{MODEL} v{version}: class {other}")
    assert lines[2].split()[:2] == ["base", "value"]
    shown = [line.split()[0] for line in lines[4:9]]
    assert len(shown) == 5 and all(any(f.startswith(name) for f in features) for name in shown)
    assert "(25 more features, together" in lines[9]
    assert lines[10].split()[0] == "output" and "= base" in lines[10]


def test_cascade_explain_of_an_unknown_model_exits_3(stack: Stack) -> None:
    result = CliRunner().invoke(
        app, ["--home", str(stack.home), "explain", "no_such_model", "--row", "1,2,3"]
    )

    assert result.exit_code == 3, result.output
    assert "no_such_model" in result.output and "NOT_FOUND" in result.output


def test_a_row_that_is_not_numbers_exits_2(stack: Stack) -> None:
    result = CliRunner().invoke(app, ["--home", str(stack.home), "explain", MODEL, "--row", "1,abc"])

    assert result.exit_code == 2, result.output
    assert "--row value 2 is not a number" in result.output
