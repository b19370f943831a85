"""`cascade trace`: cascade.traces' errors become one-line CliErrors, and the command lists the
latest cascades and prints one as a waterfall (the reading itself: tests/shared/test_traces.py)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade.cli.errors import CliError
from cascade.cli.main import app
from cascade.cli.traces import find_trace, load_spans
from tests.shared.test_traces import write_cascade


def test_unknown_or_too_short_ids_are_clear_errors(tmp_path: Path) -> None:
    write_cascade(tmp_path)
    spans = load_spans(tmp_path)
    with pytest.raises(CliError, match="no trace"):
        find_trace(spans, "ffffffffffff")
    with pytest.raises(CliError, match="at least the first 6"):
        find_trace(spans, "ab")
    with pytest.raises(CliError, match="no OTLP-JSON span files"):
        load_spans(tmp_path / "empty")


def test_cascade_trace_command_prints_the_waterfall(tmp_path: Path) -> None:
    trace_id = write_cascade(tmp_path / "traces")
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "trace", trace_id])
    assert result.exit_code == 0, result.output
    assert "data-arrived process (consumer)" in result.output
    listing = CliRunner().invoke(app, ["--home", str(tmp_path), "trace"])
    assert trace_id in listing.output
    missing = CliRunner().invoke(app, ["--home", str(tmp_path), "trace", "abcdef0123"])
    assert missing.exit_code == 1 and "no trace abcdef0123" in missing.output
