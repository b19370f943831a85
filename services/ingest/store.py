"""Ingest's own store: SQLite for metadata, one immutable Parquet file per dataset version.

A version is named by the sha256 of its canonical content (column names, then each column's values
as little-endian float64), so the same data always gets the same id, whatever path it came by.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.ingest.cleaning import Rejection, Schema
from shared.errors import NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    schema_json TEXT NOT NULL,
    head_version TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    version TEXT NOT NULL,
    dataset TEXT NOT NULL REFERENCES datasets(name),
    parent TEXT,
    rows INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    file_sha256 TEXT NOT NULL,
    profile_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (dataset, version)
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT NOT NULL,
    dataset TEXT NOT NULL REFERENCES datasets(name),
    version TEXT,
    source TEXT NOT NULL,
    report_json TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (dataset, batch_id)
);
CREATE TABLE IF NOT EXISTS rejected_rows (
    dataset TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    reason TEXT NOT NULL,
    values_json TEXT NOT NULL,
    PRIMARY KEY (dataset, batch_id, row)
);
"""


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


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    version: str | None
    report: dict[str, Any]


def content_address(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for column in frame.columns:
        digest.update(str(column).encode() + b"\0")
        digest.update(np.ascontiguousarray(frame[column].to_numpy(dtype="<f8")).tobytes())
    return digest.hexdigest()


def profile(frame: pd.DataFrame) -> list[dict[str, Any]]:
    entries = []
    for column in frame.columns:
        values = frame[column].to_numpy(dtype="float64")
        present = values[~np.isnan(values)]
        quantiles = np.quantile(present, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(present) else np.zeros(5)
        entries.append(
            {
                "name": str(column),
                "count": len(present),
                "missing_rate": float(1 - len(present) / len(values)) if len(values) else 0.0,
                "mean": float(present.mean()) if len(present) else 0.0,
                "std": float(present.std()) if len(present) else 0.0,
                "min": float(present.min()) if len(present) else 0.0,
                "max": float(present.max()) if len(present) else 0.0,
                "quantiles": [float(q) for q in quantiles],
            }
        )
    return entries


class IngestStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(root / "ingest.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # -- reads ---------------------------------------------------------------------------------
    def schema(self, dataset: str) -> Schema | None:
        row = self._db.execute("SELECT schema_json FROM datasets WHERE name=?", (dataset,)).fetchone()
        return Schema(**json.loads(row[0])) if row else None

    def head(self, dataset: str) -> str | None:
        row = self._db.execute("SELECT head_version FROM datasets WHERE name=?", (dataset,)).fetchone()
        return row[0] if row else None

    def batch(self, dataset: str, batch_id: str) -> BatchRecord | None:
        row = self._db.execute(
            "SELECT version, report_json FROM batches WHERE dataset=? AND batch_id=?", (dataset, batch_id)
        ).fetchone()
        return BatchRecord(batch_id, row[0], json.loads(row[1])) if row else None

    def version(self, dataset: str, version: str = "") -> VersionInfo:
        schema = self.schema(dataset)
        if schema is None:
            raise NotFound(f"dataset {dataset!r} does not exist")
        version = version or (self.head(dataset) or "")
        row = self._db.execute(
            "SELECT parent, rows, size_bytes, file_sha256, profile_json, created_at FROM versions"
            " WHERE dataset=? AND version=?",
            (dataset, version),
        ).fetchone()
        if row is None:
            raise NotFound(f"dataset {dataset!r} has no version {version!r}")
        return VersionInfo(
            dataset=dataset,
            version=version,
            parent=row[0],
            rows=row[1],
            size_bytes=row[2],
            file_sha256=row[3],
            profile=json.loads(row[4]),
            created_at=datetime.fromisoformat(row[5]),
            batch_ids=self._lineage_batches(dataset, version),
            schema=schema,
        )

    def _lineage_batches(self, dataset: str, version: str) -> list[str]:
        """Every batch that contributed to `version`, oldest first, by walking its parents."""
        chain: list[str] = []
        current: str | None = version
        while current:
            chain.extend(
                r[0]
                for r in self._db.execute(
                    "SELECT batch_id FROM batches WHERE dataset=? AND version=? ORDER BY received_at",
                    (dataset, current),
                )
            )
            parent = self._db.execute(
                "SELECT parent FROM versions WHERE dataset=? AND version=?", (dataset, current)
            ).fetchone()
            current = parent[0] if parent else None
        return chain[::-1]

    def version_path(self, version: str) -> Path:
        return self.versions_dir / f"{version}.parquet"

    def load(self, version: str) -> pd.DataFrame:
        return pd.read_parquet(self.version_path(version))

    # -- writes --------------------------------------------------------------------------------
    def append_batch(
        self,
        dataset: str,
        schema: Schema,
        batch_id: str,
        rows: pd.DataFrame,
        report: dict[str, Any],
        rejected: list[Rejection],
        source: str,
    ) -> tuple[str | None, int]:
        """Record a batch and, if it adds rows, the new version (parent + batch). Returns the version
        the dataset is at after it and how many rows were already in the parent version."""
        with self._lock:
            now = datetime.now(UTC).isoformat()
            parent = self.head(dataset)
            base = self.load(parent) if parent else pd.DataFrame(columns=schema.columns, dtype="float64")
            combined = pd.concat([base, rows], ignore_index=True)
            deduplicated = combined.drop_duplicates(ignore_index=True)
            already_present = len(combined) - len(deduplicated)
            version = parent
            new_version = False
            if len(deduplicated) > len(base):
                version = content_address(deduplicated)
                new_version = True
                self._write_parquet(deduplicated, self.version_path(version))
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR IGNORE INTO datasets(name, schema_json, head_version, created_at)"
                    " VALUES (?,?,?,?)",
                    (dataset, json.dumps(schema.__dict__), None, now),
                )
                if new_version:
                    assert version is not None
                    file_bytes = self.version_path(version).read_bytes()
                    db.execute(
                        "INSERT OR IGNORE INTO versions VALUES (?,?,?,?,?,?,?,?)",
                        (
                            version,
                            dataset,
                            parent,
                            len(deduplicated),
                            len(file_bytes),
                            hashlib.sha256(file_bytes).hexdigest(),
                            json.dumps(profile(deduplicated[schema.features])),
                            now,
                        ),
                    )
                    db.execute("UPDATE datasets SET head_version=? WHERE name=?", (version, dataset))
                db.execute(
                    "INSERT INTO batches VALUES (?,?,?,?,?,?)",
                    (batch_id, dataset, version if new_version else None, source, json.dumps(report), now),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO rejected_rows VALUES (?,?,?,?,?)",
                    [(dataset, batch_id, r.row, r.reason, json.dumps(r.values)) for r in rejected],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return version, already_present

    @staticmethod
    def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
        if path.exists():
            return  # content-addressed: an existing file already holds exactly these rows
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        try:
            frame.to_parquet(tmp, index=False)
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
