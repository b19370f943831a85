"""The registry's metadata in SQLite (WAL). Every write is one transaction; alias moves and the
events they cause are written together (a transactional outbox), so none is lost in a crash."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.errors import NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    artifact_size INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    dataset_version TEXT NOT NULL,
    run_json TEXT NOT NULL,
    tags_json TEXT NOT NULL,
    signature_json TEXT NOT NULL,
    idempotency_key TEXT,
    description TEXT NOT NULL,
    validation_json TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (model, version),
    UNIQUE (model, idempotency_key)
);
CREATE TABLE IF NOT EXISTS aliases (
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (model, alias)
);
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS training_specs (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    spec_json TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_json TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: int
    status: str
    artifact_sha256: str
    artifact_size: int
    dataset: str
    dataset_version: str
    run: dict[str, Any]
    tags: dict[str, str]
    signature: dict[str, Any]
    idempotency_key: str | None
    description: str
    validation: dict[str, Any] | None
    created_at: datetime
    aliases: list[str] = field(default_factory=list)


class RegistryStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One serialized write transaction; concurrent alias moves queue here and none is lost."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- versions ------------------------------------------------------------------------------
    def insert_version(self, db: sqlite3.Connection, record: dict[str, Any]) -> int:
        row = db.execute(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE model=?", (record["model"],)
        )
        version = int(row.fetchone()[0])
        db.execute(
            "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                record["model"],
                version,
                "READY",
                record["artifact_sha256"],
                record["artifact_size"],
                record["dataset"],
                record["dataset_version"],
                json.dumps(record["run"]),
                json.dumps(record["tags"]),
                json.dumps(record["signature"]),
                record["idempotency_key"] or None,
                record["description"],
                None,
                datetime.now(UTC).isoformat(),
            ),
        )
        return version

    def find_by_key(self, model: str, key: str) -> VersionRecord | None:
        row = self._db.execute(
            "SELECT version FROM versions WHERE model=? AND idempotency_key=?", (model, key)
        ).fetchone()
        return self.get(model, int(row[0])) if row else None

    def get(self, model: str, version: int) -> VersionRecord:
        row = self._db.execute(
            "SELECT * FROM versions WHERE model=? AND version=?", (model, version)
        ).fetchone()
        if row is None:
            raise NotFound(f"model {model!r} has no version {version}")
        return self._record(row)

    def list_versions(self, model: str, dataset_version: str = "") -> list[VersionRecord]:
        query, args = "SELECT * FROM versions WHERE model=?", [model]
        if dataset_version:
            query, args = query + " AND dataset_version=?", [*args, dataset_version]
        rows = self._db.execute(query + " ORDER BY version", args).fetchall()
        return [self._record(row) for row in rows]

    def models(self) -> list[tuple[str, int, dict[str, int]]]:
        rows = self._db.execute(
            "SELECT model, MAX(version) FROM versions GROUP BY model ORDER BY model"
        ).fetchall()
        return [(name, latest, self.aliases(name)) for name, latest in rows]

    def set_validation(
        self, db: sqlite3.Connection, model: str, version: int, report: dict[str, Any]
    ) -> None:
        db.execute(
            "UPDATE versions SET validation_json=? WHERE model=? AND version=?",
            (json.dumps(report), model, version),
        )

    # -- aliases -------------------------------------------------------------------------------
    def aliases(self, model: str) -> dict[str, int]:
        rows = self._db.execute("SELECT alias, version FROM aliases WHERE model=?", (model,)).fetchall()
        return {alias: int(version) for alias, version in rows}

    def alias_target(self, model: str, alias: str) -> int | None:
        row = self._db.execute(
            "SELECT version FROM aliases WHERE model=? AND alias=?", (model, alias)
        ).fetchone()
        return int(row[0]) if row else None

    def move_alias(
        self, db: sqlite3.Connection, model: str, alias: str, version: int, actor: str, reason: str
    ) -> int | None:
        """Point `alias` at `version` and append the move to the history; returns the previous target."""
        previous = self.alias_target(model, alias)
        db.execute(
            "INSERT INTO aliases VALUES (?,?,?)"
            " ON CONFLICT(model, alias) DO UPDATE SET version=excluded.version",
            (model, alias, version),
        )
        db.execute(
            "INSERT INTO alias_history(model, alias, from_version, to_version, actor, reason, at)"
            " VALUES (?,?,?,?,?,?,?)",
            (model, alias, previous, version, actor, reason, datetime.now(UTC).isoformat()),
        )
        return previous

    def history(self, model: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT alias, from_version, to_version, actor, reason, at FROM alias_history"
            " WHERE model=? ORDER BY id",
            (model,),
        ).fetchall()
        keys = ("alias", "from_version", "to_version", "actor", "reason", "at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # -- training specs ------------------------------------------------------------------------
    def add_training_spec(self, model: str, spec_json: str, actor: str) -> int:
        with self.transaction() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM training_specs WHERE model=?", (model,)
            )
            version = int(row.fetchone()[0])
            db.execute(
                "INSERT INTO training_specs VALUES (?,?,?,?,?)",
                (model, version, spec_json, actor, datetime.now(UTC).isoformat()),
            )
        return version

    def training_spec(self, model: str, version: int = 0) -> tuple[int, str, str, datetime]:
        """(version, spec JSON, actor, created at) of a model's spec; the latest when version is 0."""
        query = "SELECT version, spec_json, actor, created_at FROM training_specs WHERE model=?"
        args: tuple[Any, ...] = (model,)
        if version:
            query, args = query + " AND version=?", (model, version)
        row = self._db.execute(query + " ORDER BY version DESC LIMIT 1", args).fetchone()
        if row is None:
            raise NotFound(
                f"model {model!r} has no training spec" + (f" version {version}" if version else "")
            )
        return int(row[0]), str(row[1]), str(row[2]), datetime.fromisoformat(row[3])

    # -- outbox --------------------------------------------------------------------------------
    def enqueue(self, db: sqlite3.Connection, event_json: str) -> None:
        db.execute("INSERT INTO outbox(event_json) VALUES (?)", (event_json,))

    def pending_events(self) -> list[tuple[int, str]]:
        return [
            (int(i), str(e))
            for i, e in self._db.execute("SELECT id, event_json FROM outbox WHERE published=0 ORDER BY id")
        ]

    def mark_published(self, event_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE outbox SET published=1 WHERE id=?", (event_id,))

    def _record(self, row: tuple[Any, ...]) -> VersionRecord:
        model, version = row[0], int(row[1])
        aliases = sorted(alias for alias, target in self.aliases(model).items() if target == version)
        return VersionRecord(
            model=model,
            version=version,
            status=row[2],
            artifact_sha256=row[3],
            artifact_size=row[4],
            dataset=row[5],
            dataset_version=row[6],
            run=json.loads(row[7]),
            tags=json.loads(row[8]),
            signature=json.loads(row[9]),
            idempotency_key=row[10],
            description=row[11],
            validation=json.loads(row[12]) if row[12] else None,
            created_at=datetime.fromisoformat(row[13]),
            aliases=aliases,
        )
