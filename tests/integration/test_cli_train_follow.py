"""`cascade train --follow` on the real stack: a request the trainer refuses (a declared dataset
with no versions yet) ends the command at once with the trainer's reason and a non-zero exit,
instead of waiting out the timeout; a mistyped model is refused before the request is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade.cli.errors import EXIT_FAILURE, EXIT_NOT_FOUND
from cascade.cli.main import app
from cascade.stack import Stack

pytestmark = pytest.mark.slow


def test_a_refused_training_request_ends_follow_with_the_reason(stack: Stack, tmp_path: Path) -> None:
    runner = CliRunner()
    home = ["--home", str(stack.home)]
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"target": "y", "task": "classification", "features": [{"name": "a"}]}))
    registered = runner.invoke(app, [*home, "datasets", "register", "follow_empty", "--schema", str(schema)])
    assert registered.exit_code == 0, registered.output

    # The timeout is what --follow would wait without the dead-letter watch; the run never starts.
    result = runner.invoke(app, [*home, "train", "follow_empty", "--follow", "--timeout", "120"])

    assert result.exit_code == EXIT_FAILURE, result.output
    assert "refused the request" in result.output
    assert "did not end within" not in result.output


def test_a_mistyped_model_is_not_found_before_any_request(stack: Stack) -> None:
    result = CliRunner().invoke(app, ["--home", str(stack.home), "train", "no_such_model", "--follow"])

    assert result.exit_code == EXIT_NOT_FOUND, result.output
    assert "Retrain of" not in result.output
