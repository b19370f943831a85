"""The pieces of `cascade ingest` and `cascade demo` that need no running service."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cascade.cli.client import ClientError, FileFormat, format_of
from cascade.cli.demo import PROBE_ROWS, write_batches


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("b.csv", FileFormat.csv),
        ("B.CSV", FileFormat.csv),
        ("b.parquet", FileFormat.parquet),
        ("b.pq", FileFormat.parquet),
    ],
)
def test_format_follows_the_suffix(name: str, expected: FileFormat) -> None:
    assert format_of(Path(name)) is expected


def test_unknown_suffix_asks_for_the_format() -> None:
    with pytest.raises(ClientError, match="--format"):
        format_of(Path("b.json"))


def test_demo_batches_split_the_shuffled_data_60_40(tmp_path: Path) -> None:
    batches = write_batches(tmp_path)
    first, second = pd.read_csv(batches.first), pd.read_csv(batches.second)

    assert (len(first), len(second)) == (341, 228)
    assert list(first.columns) == list(second.columns)
    assert first.columns[-1] == "target" and len(first.columns) == 31
    assert batches.probe_features.shape == (PROBE_ROWS, 30)
    assert batches.probe_labels.tolist() == second["target"].head(PROBE_ROWS).tolist()


def test_demo_batches_are_the_same_every_run(tmp_path: Path) -> None:
    one, two = write_batches(tmp_path / "one"), write_batches(tmp_path / "two")

    assert one.first.read_bytes() == two.first.read_bytes()
