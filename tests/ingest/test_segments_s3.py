"""Ingest's Parquet segments in S3 (moto's server, a real S3 API in its own process): two replicas
share one database and one bucket, each with its own local directory. A segment is in the bucket
before its version is recorded, the other replica reads and exports it (fetched, verified), and a
segment corrupted in the bucket is refused rather than read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.database import sqlite_url
from cascade.errors import FailedPrecondition
from cascade.objectstore import S3ObjectStore, open_object_store
from cascade.services.ingest.cleaning import clean, infer_schema
from cascade.services.ingest.store import IngestStore
from tests.s3_server import (
    S3Server,
    s3_server_fixture,  # noqa: F401  (the fixture s3_server)
)


def _frame(start: int, rows: int) -> pd.DataFrame:
    values = np.arange(start, start + rows, dtype="float64")
    return pd.DataFrame({"x": values, "y": values * 2.0, "target": (values % 2).astype(int)})


def _append(store: IngestStore, batch_id: str, frame: pd.DataFrame) -> str:
    schema = store.schema("d") or infer_schema(_frame(0, 4), "target", 20)
    batch = clean(frame, schema)
    version, _ = store.append_batch(
        "d", schema, batch_id, batch.rows, batch.report(), batch.rejected, "test", batch.hashes
    )
    assert version is not None
    return version


def _replica(tmp_path: Path, name: str, s3_server: S3Server, bucket: str) -> IngestStore:
    segments = open_object_store(f"s3://{bucket}/segments", s3_server.settings())
    return IngestStore(tmp_path / name, sqlite_url(tmp_path / "ingest.sqlite3"), segments)


def test_a_replica_reads_and_exports_the_segments_another_wrote(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    first, second = (_replica(tmp_path, name, s3_server, bucket) for name in ("r1", "r2"))
    _append(first, "b1", _frame(0, 50))
    version = _append(first, "b2", _frame(50, 30))
    manifest = first.manifest("d", version)
    client = s3_server.client()
    stored = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert stored == {f"segments/{s.segment}.parquet" for s in manifest}  # the key is the digest
    for segment in manifest:
        head = client.head_object(Bucket=bucket, Key=f"segments/{segment.segment}.parquet")
        assert head["Metadata"]["sha256"] == hashlib.sha256(segment.path.read_bytes()).hexdigest()

    assert not list((tmp_path / "r2" / "segments").glob("*.parquet"))
    pd.testing.assert_frame_equal(second.load("d", version), first.load("d", version))
    exported, sha256 = second.export("d", version, row_start=40, row_end=70)
    assert pd.read_parquet(exported)["x"].tolist() == list(np.arange(40, 70, dtype="float64"))
    assert sha256 == hashlib.sha256(exported.read_bytes()).hexdigest()
    # The second replica appends on the shared chain, and its segment goes to the bucket too.
    third_version = _append(second, "b3", _frame(80, 10))
    assert len(first.load("d", third_version)) == 90
    for store in (first, second):
        store.close()


def test_a_segment_corrupted_in_the_bucket_is_refused(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    writer, reader = (_replica(tmp_path, name, s3_server, bucket) for name in ("r1", "r2"))
    version = _append(writer, "b1", _frame(0, 50))
    (segment,) = writer.manifest("d", version)
    key = f"segments/{segment.segment}.parquet"
    recorded = s3_server.client().head_object(Bucket=bucket, Key=key)["Metadata"]
    other = tmp_path / "other.parquet"
    _frame(100, 50).to_parquet(other)  # valid Parquet, other rows: only the digest tells
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=other.read_bytes(), Metadata=recorded)
    with pytest.raises(FailedPrecondition, match="corrupt"):
        reader.load("d", version)
    assert not (tmp_path / "r2" / "segments" / f"{segment.segment}.parquet").exists()
    for store in (writer, reader):
        store.close()


def test_without_a_segment_store_nothing_changes(tmp_path: Path) -> None:
    store = IngestStore(tmp_path / "r1")
    version = _append(store, "b1", _frame(0, 10))
    assert store.segment_store is None and len(store.load("d", version)) == 10
    store.close()


def test_a_failed_segment_upload_records_no_version(s3_server: S3Server, tmp_path: Path) -> None:
    """The bucket is missing: the append fails before anything commits, and the head stays."""
    segments = open_object_store("s3://no-such-bucket-for-segments/s", s3_server.settings())
    assert isinstance(segments, S3ObjectStore)
    store = IngestStore(tmp_path / "r1", "", segments)
    with pytest.raises(FailedPrecondition, match="does not exist"):
        _append(store, "b1", _frame(0, 10))
    assert store.head("d") is None
    assert store.batches("d") == []
    store.close()
