"""The pieces of `cascade ingest` and `cascade demo` that need no running service."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cascade.cli.client import ClientError, FileFormat, format_of, upload_requests
from cascade.cli.demo import PROBE_ROWS, write_batches
from cascade.stubs.cascade.ingest.v1 import ingest_pb2


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


def test_upload_stream_is_the_header_then_the_file_in_chunks(tmp_path: Path) -> None:
    batch = tmp_path / "batch.csv"
    content = bytes(range(256)) * 40
    batch.write_bytes(content)
    header = ingest_pb2.BatchHeader(
        dataset="d", format=ingest_pb2.FILE_FORMAT_CSV, target="y", source="batch.csv"
    )

    requests = list(upload_requests(batch, header, chunk_size=4096))

    assert requests[0].WhichOneof("payload") == "header"
    assert requests[0].header == header
    chunks = [request.chunk for request in requests[1:]]
    assert all(request.WhichOneof("payload") == "chunk" for request in requests[1:])
    assert [len(chunk) for chunk in chunks] == [4096, 4096, 2048]
    assert b"".join(chunks) == content


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
