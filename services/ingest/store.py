"""Ingest's own store: metadata in a database (SQLite by default, PostgreSQL by URL, both through
SQLAlchemy Core with Alembic migrations), immutable per-batch Parquet segments for rows.

A dataset version is a manifest: the chain of segments from its first version to itself, each
version adding exactly one segment (the batch's rows not already in the dataset). Appending a batch
writes only that segment: history is never rewritten.

Content addresses (all sha256, lower-case hex):

* a segment's digest ``d`` is over its canonical content: for each column in schema order, the
  column name in UTF-8, a NUL byte, then the column's values as little-endian float64;
* a version's id is a hash chain over its segments' digests:
  ``v_1 = sha256("cascade-dataset-v2\\0" + "" + "\\0" + d_1)`` and
  ``v_k = sha256("cascade-dataset-v2\\0" + v_(k-1) + "\\0" + d_k)`` (hex strings, UTF-8),
  so the same rows arriving as the same sequence of batches always get the same id, by any path.

A version made before segments existed (one Parquet file ``versions/<id>.parquet`` with all its
rows) is read as a single segment, and versions appended to it chain from its id.

Durability: a segment is written to a temporary file, fsynced, renamed into place and its directory
fsynced before the transaction that records the version commits (SQLite: WAL, synchronous=FULL); an
acknowledged batch therefore survives a crash, and a crash before the commit leaves at most an
unreferenced segment file, which start-up removes. Downloads of a whole version or a slice are
materialised once into ``exports/`` (a cache, rebuilt on demand).

Replicas: several ingest processes may share one PostgreSQL database. An append holds its
dataset's row locked from reading the head to committing the new one, so versions form one chain
whichever replica takes a batch, and a batch id counts once (the batches key): a batch another
replica stored meanwhile is answered with that replica's version. Only the head of a dataset ever
changes; versions, segments and batches are written once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from opentelemetry import propagate

from cascade import database
from cascade.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from cascade.events import Event
from cascade.objectstore import ObjectStore
from cascade.services.ingest import tables
from cascade.services.ingest.cleaning import Rejection, quantiles, row_hashes
from cascade.services.ingest.schema import Schema

__all__ = [
    "MIGRATIONS",
    "BatchRecord",
    "IngestStore",
    "NewVersion",
    "Segment",
    "VersionInfo",
    "chain_version",
    "merge_profile",
    "segment_digest",
    "segment_stats",
]

MIGRATIONS = Path(__file__).parent / "migrations"

_CHAIN_DOMAIN = b"cascade-dataset-v2\0"
_SKETCH_POINTS = np.linspace(0.0, 1.0, 101)
_QUANTILES = [0.05, 0.25, 0.5, 0.75, 0.95]
_HISTOGRAM_BINS = 10
_EXPORTS_KEPT = 8


@dataclass(frozen=True)
class Segment:
    segment: str  # digest of its canonical content; also its file name
    row_start: int
    rows: int
    size_bytes: int
    path: Path


@dataclass(frozen=True)
class VersionInfo:
    dataset: str
    version: str
    parent: str | None
    rows: int
    size_bytes: int
    file_sha256: str
    profile: list[dict[str, Any]]
    created_at: datetime
    batch_ids: list[str]
    schema: Schema
    segments: list[str]


@dataclass(frozen=True)
class NewVersion:
    """A version as `append_batch` makes it, for the event that announces it."""

    dataset: str
    version: str
    parent: str | None
    rows: int
    schema: Schema


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    dataset: str
    version: str | None
    source: str
    received_at: str
    report: dict[str, Any]


@dataclass(frozen=True)
class RejectedRecord:
    row: int
    reason: str
    values: dict[str, Any]


# ---------------------------------------------------------------------------- content addresses


def segment_digest(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for column in frame.columns:
        digest.update(str(column).encode() + b"\0")
        digest.update(np.ascontiguousarray(frame[column].to_numpy(dtype="<f8")).tobytes())
    return digest.hexdigest()


def chain_version(parent: str | None, segment: str) -> str:
    return hashlib.sha256(_CHAIN_DOMAIN + (parent or "").encode() + b"\0" + segment.encode()).hexdigest()


# ---------------------------------------------------------------------------- profiles


def segment_stats(frame: pd.DataFrame, schema: Schema) -> dict[str, Any]:
    """Mergeable per-feature statistics of one segment: moments, extremes, a 101-point quantile
    sketch, and exact value counts of categorical and boolean features."""
    stats: dict[str, Any] = {}
    for feature in schema.features:
        values = np.sort(frame[feature.name].to_numpy(dtype="float64"))
        entry: dict[str, Any] = {"count": len(values)}
        if len(values):
            mean = float(values.mean())
            entry.update(
                mean=mean,
                m2=float(np.sum((values - mean) ** 2)),
                min=float(values[0]),
                max=float(values[-1]),
                sketch=quantiles(values, _SKETCH_POINTS),
            )
            if feature.type in ("categorical", "boolean"):
                codes, counts = np.unique(values, return_counts=True)
                entry["counts"] = {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)}
        stats[feature.name] = entry
    return stats


def merge_profile(schema: Schema, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A version's profile from its segments' statistics. Count, mean, std (population), min,
    max and category frequencies are exact; quantiles and the histogram come from the merged
    quantile sketches (exact for a single segment's quantiles, within 1% of rank otherwise)."""
    profile = []
    for feature in schema.features:
        pieces = [p[feature.name] for p in parts if p[feature.name]["count"]]
        count = sum(int(p["count"]) for p in pieces)
        entry: dict[str, Any] = {
            "name": feature.name,
            "type": feature.type,
            "count": count,
            "missing_rate": 0.0,  # stored rows are complete: missing values were dropped or imputed
            "mean": 0.0,
            "std": 0.0,
            "min": 0.0,
            "max": 0.0,
            "quantiles": [0.0] * len(_QUANTILES),
            "histogram_edges": [],
            "histogram_counts": [],
            "categories": {},
        }
        if count:
            mean = sum(p["mean"] * p["count"] for p in pieces) / count
            m2 = sum(p["m2"] + p["count"] * (p["mean"] - mean) ** 2 for p in pieces)
            low, high = min(p["min"] for p in pieces), max(p["max"] for p in pieces)
            points = np.concatenate([np.asarray(p["sketch"]) for p in pieces])
            weights = np.concatenate(
                [np.full(len(p["sketch"]), p["count"] / len(p["sketch"])) for p in pieces]
            )
            order = np.argsort(points, kind="stable")
            points, weights = points[order], weights[order]
            ranks = (np.cumsum(weights) - weights / 2) / count
            if len(pieces) == 1:
                quantiles = np.interp(_QUANTILES, _SKETCH_POINTS, pieces[0]["sketch"])
            else:
                quantiles = np.interp(_QUANTILES, ranks, points)
            edges = np.linspace(low, high, _HISTOGRAM_BINS + 1) if high > low else np.array([low, high])
            cdf = np.interp(edges, points, ranks, left=0.0, right=1.0)
            cdf[0], cdf[-1] = 0.0, 1.0
            histogram = np.diff(np.round(cdf * count)).astype(int)
            entry.update(
                mean=float(mean),
                std=float(np.sqrt(m2 / count)),
                min=float(low),
                max=float(high),
                quantiles=[float(q) for q in quantiles],
                histogram_edges=[float(e) for e in edges],
                histogram_counts=[int(c) for c in histogram],
            )
            if feature.type in ("categorical", "boolean"):
                labels = (
                    [*feature.categories, "__other__"] if feature.type == "categorical" else ["false", "true"]
                )
                counts: dict[str, int] = {}
                for piece in pieces:
                    for code, n in piece.get("counts", {}).items():
                        label = labels[int(code)] if int(code) < len(labels) else code
                        counts[label] = counts.get(label, 0) + int(n)
                entry["categories"] = counts
        profile.append(entry)
    return profile


# ---------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, write: Any) -> None:
    """`write(tmp_path)` then fsync, rename into place and fsync the directory."""
    if path.exists():
        return  # content-addressed: an existing file already holds exactly this content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class IngestStore:
    def __init__(self, root: Path, database_url: str = "", segment_store: ObjectStore | None = None) -> None:
        """Segments under `root`; metadata at `database_url` (SQLAlchemy URL), by default the
        SQLite file `root`/ingest.sqlite3, which a store from before migrations also used. With a
        `segment_store` (S3, shared by replicas), each segment is stored there too before its
        version commits, and `root`/segments is a cache of it: a segment another replica wrote is
        fetched, verified, when first read."""
        self.root = root
        self.segment_store = segment_store
        self.versions_dir = root / "versions"  # single-file versions made before segments
        self.segments_dir = root / "segments"
        self.exports_dir = root / "exports"
        for directory in (self.versions_dir, self.segments_dir, self.exports_dir):
            directory.mkdir(parents=True, exist_ok=True)
        url = database_url or database.sqlite_url(root / "ingest.sqlite3")
        self.engine = database.engine(url, writer=True)
        self.reader = database.engine(url, writer=False) if url.startswith("sqlite") else self.engine
        database.migrate(self.engine, MIGRATIONS)
        # Serialises this process's writers; other processes queue on the database's locks.
        self._lock = threading.RLock()
        # dataset -> (head version, sorted 64-bit hashes of its rows): dedupe without re-reading.
        self._hashes: dict[str, tuple[str | None, np.ndarray]] = {}
        self._export_digests: dict[Path, str] = {}
        self._sweep()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.reader.dispose()
        self.engine.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as connection:
            yield connection

    def _read(self) -> sa.Connection:
        return self.reader.connect()

    def _sweep(self) -> None:
        """Remove what a crash can leave behind: temporary files and segments no version names."""
        with self._read() as db:
            referenced = set(db.execute(sa.select(tables.segments.c.segment)).scalars())
        for directory in (self.segments_dir, self.exports_dir, self.versions_dir):
            for path in directory.glob(".tmp-*"):
                path.unlink(missing_ok=True)
        for path in self.segments_dir.glob("*.parquet"):
            if path.stem not in referenced:
                path.unlink(missing_ok=True)

    # -- datasets ------------------------------------------------------------------------------
    def schema(self, dataset: str) -> Schema | None:
        with self._read() as db:
            found = db.execute(
                sa.select(tables.datasets.c.schema_json).where(tables.datasets.c.name == dataset)
            ).scalar_one_or_none()
        return Schema.from_dict(json.loads(found)) if found is not None else None

    def head(self, dataset: str) -> str | None:
        with self._read() as db:
            found: str | None = db.execute(
                sa.select(tables.datasets.c.head_version).where(tables.datasets.c.name == dataset)
            ).scalar_one_or_none()
        return found

    def datasets(self) -> list[tuple[str, Schema, str | None, int]]:
        """(name, schema, head version, number of versions) of every dataset, by name."""
        d, v = tables.datasets, tables.versions
        count = sa.select(sa.func.count()).where(v.c.dataset == d.c.name).scalar_subquery()
        with self._read() as db:
            rows = db.execute(
                sa.select(d.c.name, d.c.schema_json, d.c.head_version, count).order_by(d.c.name)
            ).all()
        return [(r[0], Schema.from_dict(json.loads(r[1])), r[2], int(r[3])) for r in rows]

    def register(self, dataset: str, schema: Schema) -> Schema:
        """Declare a dataset's schema. Registering the same schema again changes nothing; a
        different one for a dataset that already has data is refused."""
        declared = Schema.from_dict(schema.to_dict(), declared=True)
        d = tables.datasets
        with self._lock, self._transaction() as db:
            created = db.execute(
                database.insert(db, d)
                .values(
                    name=dataset,
                    schema_json=json.dumps(declared.to_dict()),
                    head_version=None,
                    created_at=datetime.now(UTC).isoformat(),
                )
                .on_conflict_do_nothing(index_elements=["name"])
                .returning(d.c.name)
            ).first()
            if created is not None:
                return declared
            row = db.execute(
                sa.select(d.c.schema_json, d.c.head_version).where(d.c.name == dataset).with_for_update()
            ).one()
            existing = Schema.from_dict(json.loads(row.schema_json))
            if existing == declared:
                return existing
            if row.head_version is not None or existing.declared:
                raise AlreadyExists(f"dataset {dataset!r} already has a schema; it cannot change")
            db.execute(
                d.update().where(d.c.name == dataset).values(schema_json=json.dumps(declared.to_dict()))
            )
        return declared

    # -- batches -------------------------------------------------------------------------------
    def batch(self, dataset: str, batch_id: str) -> BatchRecord | None:
        with self._read() as db:
            return self._batch(db, dataset, batch_id)

    def _batch(self, db: sa.Connection, dataset: str, batch_id: str) -> BatchRecord | None:
        b = tables.batches
        row = (
            db.execute(sa.select(b).where(b.c.dataset == dataset, b.c.batch_id == batch_id))
            .mappings()
            .first()
        )
        return _batch_record(row) if row else None

    def batches(self, dataset: str, version: str = "") -> list[BatchRecord]:
        """Batches of a dataset, oldest first; with `version`, those in its lineage."""
        b = tables.batches
        with self._read() as db:
            rows = db.execute(
                sa.select(b).where(b.c.dataset == dataset).order_by(b.c.received_at, b.c.batch_id)
            ).mappings()
            records = [_batch_record(r) for r in rows]
        if version:
            lineage = set(self.version(dataset, version).batch_ids)
            records = [r for r in records if r.batch_id in lineage]
        return records

    def rejected_rows(self, dataset: str, batch_id: str) -> list[RejectedRecord]:
        if self.batch(dataset, batch_id) is None:
            raise NotFound(f"dataset {dataset!r} has no batch {batch_id!r}")
        r = tables.rejected_rows
        with self._read() as db:
            rows = db.execute(
                sa.select(r.c.row, r.c.reason, r.c.values_json)
                .where(r.c.dataset == dataset, r.c.batch_id == batch_id)
                .order_by(r.c.row)
            ).all()
        return [RejectedRecord(int(row[0]), row[1], json.loads(row[2])) for row in rows]

    # -- versions ------------------------------------------------------------------------------
    def version(self, dataset: str, version: str = "") -> VersionInfo:
        schema = self.schema(dataset)
        if schema is None:
            raise NotFound(f"dataset {dataset!r} does not exist")
        version = version or (self.head(dataset) or "")
        v = tables.versions
        with self._read() as db:
            row = db.execute(
                sa.select(
                    v.c.parent, v.c.rows, v.c.size_bytes, v.c.file_sha256, v.c.profile_json, v.c.created_at
                ).where(v.c.dataset == dataset, v.c.version == version)
            ).first()
        if row is None:
            raise NotFound(f"dataset {dataset!r} has no version {version!r}")
        return VersionInfo(
            dataset=dataset,
            version=version,
            parent=row[0],
            rows=int(row[1]),
            size_bytes=int(row[2]),
            file_sha256=row[3],
            profile=json.loads(row[4]),
            created_at=datetime.fromisoformat(row[5]),
            batch_ids=self._lineage_batches(dataset, version),
            schema=schema,
            segments=[s.segment for s in self.manifest(dataset, version)],
        )

    def versions(self, dataset: str) -> list[VersionInfo]:
        schema = self.schema(dataset)
        if schema is None:
            raise NotFound(f"dataset {dataset!r} does not exist")
        # Read in three queries, not `version()` per version: each version's batches and segments
        # extend its parent's, so walking every version's lineage apart costs O(versions²) queries
        # (thousands at 100 versions, seconds for the console's Datasets page).
        v, seg = tables.versions, tables.segments
        with self._read() as db:
            rows = db.execute(
                sa.select(
                    v.c.version,
                    v.c.parent,
                    v.c.rows,
                    v.c.size_bytes,
                    v.c.file_sha256,
                    v.c.profile_json,
                    v.c.created_at,
                )
                .where(v.c.dataset == dataset)
                .order_by(v.c.created_at, v.c.version)
            ).all()
            newest_first = self._batches_by_version(db, dataset)
            segment_of: dict[str, str] = {
                version: segment
                for version, segment in db.execute(
                    sa.select(seg.c.version, seg.c.segment).where(seg.c.dataset == dataset)
                )
            }
        batches: dict[str, list[str]] = {}
        segments: dict[str, list[str]] = {}
        for version, parent, *_ in rows:  # oldest first: a parent is met before its children
            if parent and parent not in batches:  # not so (clock skew): read this one's lineage apart
                batches[version] = self._lineage_batches(dataset, version)
                segments[version] = [s.segment for s in self.manifest(dataset, version)]
                continue
            batches[version] = batches.get(parent or "", []) + newest_first.get(version, [])[::-1]
            if version in segment_of:
                segments[version] = [*segments.get(parent or "", []), segment_of[version]]
            else:  # a single-file version from before segments holds every row up to it
                segments[version] = [s.segment for s in self.manifest(dataset, version)]

        infos = []
        for version, parent, count, size_bytes, file_sha256, profile_json, created_at in rows:
            infos.append(
                VersionInfo(
                    dataset=dataset,
                    version=version,
                    parent=parent,
                    rows=int(count),
                    size_bytes=int(size_bytes),
                    file_sha256=file_sha256,
                    profile=json.loads(profile_json),
                    created_at=datetime.fromisoformat(created_at),
                    batch_ids=batches[version],
                    schema=schema,
                    segments=segments[version],
                )
            )
        return infos

    @staticmethod
    def _batches_by_version(db: sa.Connection, dataset: str) -> dict[str | None, list[str]]:
        """version -> the ids of the batches that made it, newest first."""
        b = tables.batches
        newest_first: dict[str | None, list[str]] = {}
        for version, batch_id in db.execute(
            sa.select(b.c.version, b.c.batch_id)
            .where(b.c.dataset == dataset)
            .order_by(b.c.received_at.desc(), b.c.batch_id.desc())
        ):
            newest_first.setdefault(version, []).append(batch_id)
        return newest_first

    def _chain(self, dataset: str, version: str) -> list[tuple[Any, ...]]:
        """The version and its ancestors, newest first: (version, its segment, the segment's
        row_start, rows and size, and the version's rows and size); the segment's are NULL for a
        version from before segments."""
        query = sa.text(
            "WITH RECURSIVE chain(v, depth) AS (SELECT CAST(:version AS TEXT), 0 UNION ALL"
            " SELECT versions.parent, chain.depth + 1 FROM versions JOIN chain"
            " ON versions.dataset = :dataset AND versions.version = chain.v"
            " WHERE versions.parent IS NOT NULL)"
            " SELECT chain.v, segments.segment, segments.row_start, segments.rows, segments.size_bytes,"
            " versions.rows, versions.size_bytes FROM chain"
            " LEFT JOIN segments ON segments.dataset = :dataset AND segments.version = chain.v"
            " LEFT JOIN versions ON versions.dataset = :dataset AND versions.version = chain.v"
            " ORDER BY chain.depth"
        )
        with self._read() as db:
            return [tuple(row) for row in db.execute(query, {"version": version, "dataset": dataset})]

    def _lineage(self, dataset: str, version: str) -> list[str]:
        """The version and its ancestors, newest first."""
        return [row[0] for row in self._chain(dataset, version)]

    def _lineage_batches(self, dataset: str, version: str) -> list[str]:
        """Every batch that contributed to `version`, oldest first."""
        with self._read() as db:
            newest_first = self._batches_by_version(db, dataset)
        chain: list[str] = []
        for current in self._lineage(dataset, version):
            chain.extend(newest_first.get(current, []))
        return chain[::-1]

    def manifest(self, dataset: str, version: str) -> list[Segment]:
        """The segments whose concatenation is the version, oldest first."""
        segments: list[Segment] = []
        for current, segment, row_start, rows, size_bytes, version_rows, version_size in self._chain(
            dataset, version
        ):
            if segment is None:  # a single-file version from before segments: all rows up to it
                legacy = self.versions_dir / f"{current}.parquet"
                if version_rows is None or not legacy.exists():
                    raise NotFound(f"dataset {dataset!r}: version {current!r} has no data")
                segments.append(Segment(current, 0, int(version_rows), int(version_size), legacy))
                break
            segments.append(
                Segment(
                    segment,
                    int(row_start),
                    int(rows),
                    int(size_bytes),
                    self.segments_dir / f"{segment}.parquet",
                )
            )
        return segments[::-1]

    def load(self, dataset: str, version: str) -> pd.DataFrame:
        return pd.concat(
            [pd.read_parquet(self._local(s)) for s in self.manifest(dataset, version)], ignore_index=True
        )

    # -- downloads -----------------------------------------------------------------------------
    def export(
        self, dataset: str, version: str, row_start: int = 0, row_end: int = 0, last_batches: int = 0
    ) -> tuple[Path, str]:
        """One Parquet file holding the version (or a slice: rows [row_start, row_end), or the rows
        its latest `last_batches` batches added), and its sha256. Built once, segment by segment."""
        segments = self.manifest(dataset, version)
        total = segments[-1].row_start + segments[-1].rows if segments else 0
        if last_batches < 0 or row_start < 0 or row_end < 0:
            raise InvalidArgument("slice bounds must not be negative")
        if last_batches:
            if row_start or row_end:
                raise InvalidArgument("give either a row range or last_batches, not both")
            chosen = segments[-last_batches:]
            row_start, row_end = (chosen[0].row_start, total) if chosen else (total, total)
        row_end = row_end or total
        if row_start > row_end or row_end > total:
            raise InvalidArgument(f"row range {row_start}..{row_end} is outside 0..{total}")
        whole = row_start == 0 and row_end == total
        path = self.exports_dir / (
            f"{version}.parquet" if whole else f"{version}-{row_start}-{row_end}.parquet"
        )
        with self._lock:
            if not path.exists():
                _write_atomically(path, lambda tmp: self._concatenate(segments, row_start, row_end, tmp))
                self._prune_exports(keep=path)
            digest = self._export_digests.get(path)
            if digest is None:
                digest = _file_sha256(path)
                self._export_digests[path] = digest
        return path, digest

    def _prune_exports(self, keep: Path) -> None:
        """Exports are a cache: keep the most recently built few. A download in progress reads
        from its open file, and a resumed one rebuilds the same bytes."""
        built = sorted(self.exports_dir.glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for path in [p for p in built if p != keep][_EXPORTS_KEPT - 1 :]:
            path.unlink(missing_ok=True)
            self._export_digests.pop(path, None)

    def _concatenate(self, segments: list[Segment], start: int, end: int, out: str) -> None:
        writer: pq.ParquetWriter | None = None
        try:
            for segment in segments:
                low, high = max(start, segment.row_start), min(end, segment.row_start + segment.rows)
                if low >= high and writer is not None:
                    continue
                table = pq.read_table(self._local(segment))
                table = table.slice(low - segment.row_start, max(0, high - low)).replace_schema_metadata(None)
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema, use_dictionary=False)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()

    # -- writes --------------------------------------------------------------------------------
    def _history_hashes(self, dataset: str, head: str | None) -> np.ndarray:
        cached = self._hashes.get(dataset)
        if cached is not None and cached[0] == head:
            return cached[1]
        hashes = np.sort(row_hashes(self.load(dataset, head))) if head else np.zeros(0, dtype="uint64")
        self._hashes[dataset] = (head, hashes)
        return hashes

    def append_batch(
        self,
        dataset: str,
        schema: Schema,
        batch_id: str,
        rows: pd.DataFrame,
        report: dict[str, Any],
        rejected: list[Rejection],
        source: str,
        hashes: np.ndarray | None = None,
        announce: Callable[[NewVersion], Event] | None = None,
    ) -> tuple[str | None, int]:
        """Record a batch and, if it adds rows, the new version (parent + one segment of the rows
        new to the dataset) and the event `announce` makes of it, in the outbox, in one
        transaction. Returns the dataset's version after it and how many of the batch's rows were
        already in the parent version.

        The transaction holds the dataset's row from reading the head to moving it, so a replica
        appending to the same dataset waits, then builds on this version. A batch that another
        replica stored meanwhile is not stored again: `report` becomes the stored one, and its
        version is returned."""
        with self._lock, self._transaction() as db:
            now = datetime.now(UTC).isoformat()
            parent = self._hold(db, dataset, schema, now)
            stored = self._batch(db, dataset, batch_id)
            if stored is not None:
                report.clear()
                report.update(stored.report)
                return stored.version, 0
            history = self._history_hashes(dataset, parent)
            hashes = row_hashes(rows) if hashes is None else hashes
            if len(history):
                positions = np.minimum(np.searchsorted(history, hashes), len(history) - 1)
                known = history[positions] == hashes
            else:
                known = np.zeros(len(rows), dtype=bool)
            new_rows = rows[~known].reset_index(drop=True)
            already_present = int(known.sum())
            report["rows_duplicate"] += already_present
            report["rows_accepted"] -= already_present
            version = parent
            segment: Segment | None = None
            stats: dict[str, Any] = {}
            if len(new_rows):
                segment = self._write_segment(dataset, parent, new_rows)
                version = chain_version(parent, segment.segment)
                stats = segment_stats(new_rows, schema)
            # Made (and its size checked) before anything commits: a batch is stored with its event.
            event = (
                announce(NewVersion(dataset, version, parent, segment.row_start + segment.rows, schema))
                if announce is not None and segment is not None and version is not None
                else None
            )
            if segment is not None:
                assert version is not None
                self._record_version(db, dataset, schema, parent, version, segment, stats, now)
            if event is not None:
                self._enqueue(db, event, event.encoded().decode())
            db.execute(
                tables.batches.insert().values(
                    batch_id=batch_id,
                    dataset=dataset,
                    version=version if segment else None,
                    source=source,
                    report_json=json.dumps(report),
                    received_at=now,
                )
            )
            if rejected:
                db.execute(
                    database.insert(db, tables.rejected_rows).on_conflict_do_nothing(),
                    [
                        {
                            "dataset": dataset,
                            "batch_id": batch_id,
                            "row": r.row,
                            "reason": r.reason,
                            "values_json": json.dumps(r.values),
                        }
                        for r in rejected
                    ],
                )
        if segment is not None:  # committed
            merged = np.concatenate([history, hashes[~known]])
            merged.sort()
            with self._lock:
                self._hashes[dataset] = (version, merged)
        return version, already_present

    def _hold(self, db: sa.Connection, dataset: str, schema: Schema, now: str) -> str | None:
        """Within `db`: create the dataset with `schema` if it is new, lock its row until the
        transaction ends (PostgreSQL; SQLite's writer holds the whole database from BEGIN) and
        return its head. A batch cleaned against another schema than the dataset's (another
        replica made the dataset meanwhile) is refused as unavailable: sent again (a client's
        retry, Kafka's redelivery), it is cleaned against the dataset's schema."""
        d = tables.datasets
        db.execute(
            database.insert(db, d)
            .values(name=dataset, schema_json=json.dumps(schema.to_dict()), head_version=None, created_at=now)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        row = db.execute(
            sa.select(d.c.schema_json, d.c.head_version).where(d.c.name == dataset).with_for_update()
        ).one()
        if Schema.from_dict(json.loads(row.schema_json)) != Schema.from_dict(schema.to_dict()):
            raise Unavailable(
                f"dataset {dataset!r} got its schema from another upload meanwhile; send the batch again"
            )
        head: str | None = row.head_version
        return head

    def _record_version(
        self,
        db: sa.Connection,
        dataset: str,
        schema: Schema,
        parent: str | None,
        version: str,
        segment: Segment,
        stats: dict[str, Any],
        now: str,
    ) -> None:
        """Insert the version and its segment and move the dataset's head to it, within `db`."""
        parts = [stats, *self._stats_of(dataset, parent)]
        size = segment.size_bytes + (self.version(dataset, parent).size_bytes if parent else 0)
        rows = segment.row_start + segment.rows
        db.execute(
            database.insert(db, tables.versions)
            .values(
                version=version,
                dataset=dataset,
                parent=parent,
                rows=rows,
                size_bytes=size,
                file_sha256=segment.segment,
                profile_json=json.dumps(merge_profile(schema, parts)),
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["dataset", "version"])
        )
        db.execute(
            database.insert(db, tables.segments)
            .values(
                dataset=dataset,
                version=version,
                seq=len(self._lineage(dataset, parent)) if parent else 0,
                segment=segment.segment,
                row_start=segment.row_start,
                rows=segment.rows,
                size_bytes=segment.size_bytes,
                stats_json=json.dumps(stats),
            )
            .on_conflict_do_nothing(index_elements=["dataset", "version"])
        )
        db.execute(
            tables.datasets.update().where(tables.datasets.c.name == dataset).values(head_version=version)
        )

    def _write_segment(self, dataset: str, parent: str | None, new_rows: pd.DataFrame) -> Segment:
        """The rows new to the dataset as a durable, content-addressed Parquet file."""
        digest = segment_digest(new_rows)
        path = self.segments_dir / f"{digest}.parquet"
        table = pa.Table.from_pandas(new_rows, preserve_index=False).replace_schema_metadata(None)
        _write_atomically(path, lambda tmp: pq.write_table(table, tmp, use_dictionary=False))
        if self.segment_store is not None:  # before the version commits: no version names a lost segment
            self.segment_store.put(f"{digest}.parquet", path, _file_sha256(path))
        parent_rows = self.version(dataset, parent).rows if parent else 0
        return Segment(digest, parent_rows, len(new_rows), path.stat().st_size, path)

    def _local(self, segment: Segment) -> Path:
        """The segment's file on this machine, fetched (verified) from the segment store if missing."""
        if self.segment_store is not None and not segment.path.exists():
            self.segment_store.fetch(f"{segment.segment}.parquet", segment.path)
        return segment.path

    # -- outbox --------------------------------------------------------------------------------
    def _enqueue(self, db: sa.Connection, event: Event, event_json: str) -> None:
        """Within the caller's transaction. An event already there (same id) stays as it is. The
        caller's trace context is kept with it, so the event continues that trace whenever it goes."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        db.execute(
            database.insert(db, tables.outbox)
            .values(
                event_id=event.id,
                event_type=event.type,
                event_json=event_json,
                published=False,
                trace_carrier=json.dumps(carrier),
            )
            .on_conflict_do_nothing(index_elements=["event_id"])
        )

    def trace_carrier(self, event_id: str) -> dict[str, str]:
        """The W3C trace context (`traceparent`, ...) the event was stored in; empty if none."""
        o = tables.outbox
        with self._read() as db:
            found = db.execute(
                sa.select(o.c.trace_carrier).where(o.c.event_id == event_id)
            ).scalar_one_or_none()
        carrier: dict[str, str] = json.loads(found) if found else {}
        return carrier

    def ensure_announced(self, event: Event) -> None:
        """Store `event` in the outbox unless it is there already (published or not)."""
        event_json = event.encoded().decode()
        with self._lock, self._transaction() as db:
            self._enqueue(db, event, event_json)

    def pending_events(self, limit: int | None = None) -> list[tuple[int, str, str]]:
        """(id, event type, event JSON) of the oldest `limit` (default: all) unpublished events.

        Only committed events are seen (each transaction writes on its own connection). Replicas
        sharing the database publish them one at a time, whichever holds the `outbox` lease."""
        o = tables.outbox
        with self._read() as db:
            rows = db.execute(
                sa.select(o.c.id, o.c.event_type, o.c.event_json)
                .where(o.c.published == sa.false())
                .order_by(o.c.id)
                .limit(limit)
            ).all()
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def newest_event_id(self) -> int:
        o = tables.outbox
        with self._read() as db:
            return int(db.execute(sa.select(sa.func.coalesce(sa.func.max(o.c.id), 0))).scalar_one())

    def lease(self, name: str, seconds: float) -> database.Lease:
        """The lease `name` in this database, for a new holder: replicas sharing the database take
        turns at the job it names (the outbox relay's `outbox`)."""
        return database.Lease(self.engine, tables.leases, name, seconds)

    def mark_published(self, event_ids: Sequence[int]) -> None:
        if not event_ids:
            return
        o = tables.outbox
        with self._transaction() as db:
            db.execute(o.update().where(o.c.id.in_(list(event_ids))).values(published=True))

    def event_pending(self, event_id: str) -> bool:
        """Whether the event with this id waits in the outbox (False once published, or unknown)."""
        o = tables.outbox
        with self._read() as db:
            published = db.execute(
                sa.select(o.c.published).where(o.c.event_id == event_id)
            ).scalar_one_or_none()
        return published is not None and not published

    def _stats_of(self, dataset: str, version: str | None) -> list[dict[str, Any]]:
        """Segment statistics of a version's lineage (computed from the file for a legacy one)."""
        if not version:
            return []
        schema = self.schema(dataset)
        assert schema is not None
        manifest = self.manifest(dataset, version)
        s = tables.segments
        with self._read() as db:
            stored: dict[str, str] = {
                name: stats
                for name, stats in db.execute(
                    sa.select(s.c.segment, s.c.stats_json).where(
                        s.c.dataset == dataset, s.c.segment.in_([segment.segment for segment in manifest])
                    )
                )
            }
        return [
            json.loads(stored[segment.segment])
            if segment.segment in stored
            else segment_stats(pd.read_parquet(segment.path), schema)
            for segment in manifest
        ]

    def segments(self, dataset: str, version: str) -> Iterator[Segment]:
        yield from self.manifest(dataset, version)


def _batch_record(row: sa.RowMapping) -> BatchRecord:
    return BatchRecord(
        row["batch_id"],
        row["dataset"],
        row["version"],
        row["source"],
        row["received_at"],
        json.loads(row["report_json"]),
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
