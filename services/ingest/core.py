"""Ingest's domain: turn a raw batch into a clean, versioned dataset and announce it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from prometheus_client import Counter

from services.ingest.cleaning import clean, infer_schema, suggest_schema
from services.ingest.schema import Schema, validate_dataset_name
from services.ingest.store import IngestStore, VersionInfo
from shared.errors import InvalidArgument
from shared.events import DataArrived, DatasetProfileEntry

log = logging.getLogger(__name__)

ROWS = Counter("cascade_ingest_rows_total", "Rows ingested, by outcome.", ["dataset", "outcome"])

SOURCE = "cascade/ingest"
_PROFILE_FIELDS = set(DatasetProfileEntry.model_fields)
Emit = Callable[[DataArrived], Awaitable[None]]


@dataclass(frozen=True)
class IngestResult:
    batch_id: str
    dataset_version: str | None
    created: bool
    report: dict[str, Any]


def batch_id_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def records_batch_id(records: list[dict[str, Any]]) -> str:
    return batch_id_of(json.dumps(records, sort_keys=True, default=str).encode())


class IngestCore:
    def __init__(self, store: IngestStore, emit: Emit, max_classes: int = 20) -> None:
        self.store = store
        self.emit = emit
        self.max_classes = max_classes
        self._locks: dict[str, asyncio.Lock] = {}

    async def ingest(
        self, dataset: str, frame: pd.DataFrame, batch_id: str, target: str, source: str
    ) -> IngestResult:
        """Validate, clean and append one batch. Idempotent: a batch seen before changes nothing
        and its *data arrived* is announced again, so a crash between storing and announcing
        loses nothing."""
        validate_dataset_name(dataset)
        lock = self._locks.setdefault(dataset, asyncio.Lock())
        async with lock:
            seen = self.store.batch(dataset, batch_id)
            if seen is not None:
                log.info("batch %s of %s seen before; nothing changes", batch_id[:12], dataset)
                if seen.version:
                    await self.emit(self._event(self.store.version(dataset, seen.version), batch_id))
                return IngestResult(batch_id, seen.version, False, seen.report)
            result = await asyncio.to_thread(
                self._append, dataset, frame, batch_id, target or "target", source
            )
        if result.created and result.dataset_version:
            await self.emit(self._event(self.store.version(dataset, result.dataset_version), batch_id))
        return result

    def _append(
        self, dataset: str, frame: pd.DataFrame, batch_id: str, target: str, source: str
    ) -> IngestResult:
        schema = self.store.schema(dataset) or infer_schema(frame, target, self.max_classes)
        if target != schema.target and not (schema.declared and target == "target"):
            raise InvalidArgument(f"dataset {dataset!r} has target {schema.target!r}, not {target!r}")
        batch = clean(frame, schema)
        report = batch.report()
        parent = self.store.head(dataset)
        version, _already_present = self.store.append_batch(
            dataset, schema, batch_id, batch.rows, report, batch.rejected, source, batch.hashes
        )
        ROWS.labels(dataset, "accepted").inc(report["rows_accepted"])
        ROWS.labels(dataset, "repaired").inc(report["rows_repaired"])
        ROWS.labels(dataset, "rejected").inc(report["rows_rejected"])
        ROWS.labels(dataset, "duplicate").inc(report["rows_duplicate"])
        log.info(
            "batch %s of %s: %d received, %d accepted (%d repaired), %d rejected, %d duplicate -> version %s",
            batch_id[:12],
            dataset,
            report["rows_received"],
            report["rows_accepted"],
            report["rows_repaired"],
            report["rows_rejected"],
            report["rows_duplicate"],
            (version or "-")[:12],
        )
        return IngestResult(batch_id, version, version is not None and version != parent, report)

    async def register(self, dataset: str, schema: Schema) -> Schema:
        validate_dataset_name(dataset)
        lock = self._locks.setdefault(dataset, asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(self.store.register, dataset, schema)

    def suggest(self, frame: pd.DataFrame, target: str) -> Schema:
        """A schema inferred from a sample, for a person to confirm and register."""
        return suggest_schema(frame, target or "target", self.max_classes)

    @staticmethod
    def _event(info: VersionInfo, batch_id: str) -> DataArrived:
        return DataArrived(
            # Deterministic id: the same version announced twice is recognisably the same event.
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"cascade:data-arrived:{info.dataset}:{info.version}")),
            source=SOURCE,
            subject=info.dataset,
            dataset=info.dataset,
            dataset_version=info.version,
            parent_version=info.parent,
            batch_id=batch_id,
            rows=info.rows,
            target=info.schema.target,
            task=info.schema.task,
            features=info.schema.names,
            profile=[
                DatasetProfileEntry(**{k: v for k, v in entry.items() if k in _PROFILE_FIELDS})
                for entry in info.profile
            ],
        )
