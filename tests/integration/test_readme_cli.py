"""The README's CLI examples run against the real stack, so none drifts from the code.

Every `cascade ...` command in the README's ```bash and ```console blocks is either run here, in
the README's order and in a directory holding the files it names, or listed in SKIPPED with the
reason it cannot run here; a new example that is neither fails `test_every_example_is_run_or_skipped`.
A command must exit 0 unless its ```console block shows `$ echo $?` and the code after it. The
output a ```console block shows must be what the command prints, up to numbers, ids and lines
elided with `...`.

Names are made unique to this test (`churn` is `readme_churn` here), since the session's stack is
shared with every other integration test."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from cascade.cli.main import app
from cascade.services.trainer.training import build_pipeline, export_onnx
from cascade.stack import Stack

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"

NAMES = {
    "churn": "readme_churn",
    "patients": "readme_patients",
    "breast_cancer": "readme_bc",
    "tiny": "readme_tiny",
    "scratch": "readme_scratch",
    "alice": "readme_alice",
}

_SECURED = "tests/integration/test_secured_stack.py"
SKIPPED = {
    "cascade down": "stops the stack every integration test shares",
    "cascade up --tls --auth": f"restarts the shared stack secured; {_SECURED} does",
    "cascade up --mtls --auth": f"restarts the shared stack secured; {_SECURED} does",
    "cascade up --tls --auth --kafka-security": "needs a new home; test_kafka_security.py does",
    "cascade certs init --host my.host": "would write a CA into the shared stack's home; the Deploying "
    "example runs `cascade certs init --dir ...`",
    "cascade models import breast_cancer model.json --reference breast_cancer": "needs a model trained "
    "elsewhere with XGBoost; tests/integration/test_import.py imports one",
    "cascade models import churn model.txt --reference churn@3f2c9a --follow": "names a made-up dataset "
    "version; tests/integration/test_import.py imports a LightGBM model",
}


@dataclass
class Example:
    """One `cascade` command of the README, the block it is in, and what its block says it does."""

    section: str
    command: str
    exit_code: int = 0
    output: list[str] = field(default_factory=list)


def _examples() -> list[Example]:
    examples: list[Example] = []
    section = ""
    text = README.read_text()
    for match in re.finditer(r"^(#+ [^\n]*)$|^ *```(bash|console)\n(.*?)^ *```", text, re.S | re.M):
        if match[1]:
            section = match[1].lstrip("# ")
        elif match[2] == "bash":
            examples += [Example(section, command) for command in _bash_commands(match[3])]
        else:
            examples += _console_commands(section, match[3])
    return examples


def _bash_commands(block: str) -> Iterator[str]:
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
        if not line.strip().startswith("cascade "):
            continue
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                if command and command[0] == "cascade":
                    yield shlex.join(command)
                command = []
            else:
                command.append(word)


def _console_commands(section: str, block: str) -> list[Example]:
    examples: list[Example] = []
    for line in block.splitlines():
        if line.startswith("$ echo $?"):
            continue
        if line.startswith("$ "):
            examples.append(Example(section, shlex.join(shlex.split(line[2:]))))
        elif examples and re.fullmatch(r"\d+", line.strip()):
            examples[-1].exit_code = int(line)
        elif examples:
            examples[-1].output.append(line)
    return examples


def test_every_example_is_run_or_skipped() -> None:
    commands = {example.command for example in _examples()}

    assert set(SKIPPED) <= commands, f"skipped but no longer in the README: {set(SKIPPED) - commands}"
    assert len(commands - set(SKIPPED)) >= 20, "the README's examples were not found"


# ---------------------------------------------------------------------- running them


def _frame() -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).frame.sample(frac=1.0, random_state=3).reset_index(drop=True)


def _classifier_onnx() -> bytes:
    frame = _frame()
    pipeline = build_pipeline("logistic_regression", "classification", {}, seed=0)
    pipeline.fit(frame.drop(columns="target").to_numpy(np.float32), frame["target"])
    return export_onnx(pipeline, 30, "classification")


def _regressor_onnx() -> bytes:
    rows = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    pipeline = build_pipeline("ridge", "regression", {}, seed=0)
    pipeline.fit(rows, rows @ np.array([1.0, -2.0, 0.5]))
    return export_onnx(pipeline, 3, "regression")


def _files(directory: Path) -> None:
    """The files the README's examples name, in the directory they run in."""
    frame = _frame()
    frame.iloc[:120].rename(columns={"target": "label"}).to_csv(directory / "batch-1.csv", index=False)
    frame.iloc[:200].to_csv(directory / "batch-3.csv", index=False)
    frame.iloc[200:230].to_csv(directory / "small.csv", index=False)
    # churn: four batches, then a reference of rows it has not seen.
    for number, start in enumerate(range(0, 480, 120), start=1):
        frame.iloc[start : start + 120].to_csv(directory / f"churn-{number}.csv", index=False)
    frame.iloc[480:].to_csv(directory / "reference.csv", index=False)
    (directory / "model.onnx").write_bytes(_classifier_onnx())
    (directory / "scratch.onnx").write_bytes(_regressor_onnx())
    pd.DataFrame({"a": [0.1, 1.5, -0.3], "b": [2.0, 0.0, 1.0], "c": [0.5, 0.5, -1.0]}).to_csv(
        directory / "rows.csv", index=False
    )


def _four_churn_versions(run: Callable[[list[str]], str]) -> None:
    """What the registry's examples assume: churn (manual policy) with four judged versions."""
    for number in range(1, 5):
        run(["ingest", f"churn-{number}.csv", "--dataset", NAMES["churn"], "--follow", "--timeout", "240"])


# Run before the first example that starts so.
SETUP: dict[str, Callable[[Callable[[list[str]], str]], None]] = {
    "cascade models search churn ": _four_churn_versions,
}


def _renamed(text: str) -> str:
    for name, unique in NAMES.items():
        text = re.sub(rf"(?<![\w-]){name}(?![\w-]|\.\w)", unique, text)  # not a file's name
    return text


def _shape(line: str) -> str:
    """A line with what changes from run to run (ids, hashes, numbers) made alike."""
    line = re.sub(r"[0-9a-f]{8,}(-[0-9a-f]{4,})*", "<id>", line.rstrip())
    return re.sub(r"\d+(\.\d+)?", "<n>", line)


def test_the_readme_examples_run(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(args: list[str], exit_code: int = 0) -> str:
        result = runner.invoke(app, ["--home", str(stack.home), *args])
        assert result.exit_code == exit_code, f"cascade {shlex.join(args)}:\n{result.output}"
        return result.output

    ran = []
    for example in _examples():
        if example.command in SKIPPED:
            continue
        for start in [start for start in SETUP if example.command.startswith(start)]:
            SETUP.pop(start)(run)
        args = shlex.split(_renamed(example.command))[1:]
        output = run(args, example.exit_code)
        ran.append(example.command)
        printed = {_shape(line) for line in output.splitlines()}
        for line in example.output:
            if "..." not in line and line.strip():
                assert _shape(_renamed(line)) in printed, (
                    f"{example.command} no longer prints {line!r}:\n{output}"
                )
        if "--metric" in args:  # a search example must find what it describes
            assert "No versions match." not in output, output
    assert len(ran) >= 20
