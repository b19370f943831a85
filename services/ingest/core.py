"""Ingest's domain: turn a raw batch into a clean, versioned dataset and announce it."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from opentelemetry import context as otel_context
from opentelemetry import propagate
from prometheus_client import Counter

from cascade.errors import InvalidArgument
from cascade.events import DataArrived, Event
from cascade.outbox import OutboxRelay
from cascade.services.ingest.cleaning import Rejection, clean, infer_schema, suggest_schema
from cascade.services.ingest.schema import Schema, validate_dataset_name
from cascade.services.ingest.store import IngestStore, NewVersion

log = logging.getLogger(__name__)

ROWS = Counter("cascade_ingest_rows_total", "Rows ingested, by outcome.", ["dataset", "outcome"])

SOURCE = "cascade/ingest"
Emit = Callable[[Event], Awaitable[None]]


@dataclass(frozen=True)
class IngestResult:
    batch_id: str
    dataset_version: str | None
    created: bool
    report: dict[str, Any]
    # The version's data-arrived event is stored but Kafka has not taken it yet (an outage): the
    # outbox relay publishes it when Kafka is back.
    event_pending: bool = False


def batch_id_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def records_batch_id(records: list[dict[str, Any]]) -> str:
    return batch_id_of(json.dumps(records, sort_keys=True, default=str).encode())


class IngestCore:
    def __init__(
        self,
        store: IngestStore,
        emit: Emit,
        max_classes: int = 20,
        max_columns: int = 1000,
        event_wait_seconds: float = 0.25,
        outbox_interval_seconds: float = 1.0,
        outbox_lease_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.max_classes = max_classes
        self.max_columns = max_columns
        self.event_wait_seconds = event_wait_seconds
        # Events go out through the store's outbox: stored with the batch, published after, by
        # whichever replica's relay holds the outbox's lease.
        self.emit = emit
        self.outbox = OutboxRelay(
            store,
            self._emit_in_its_trace,
            interval=outbox_interval_seconds,
            lease=store.lease("outbox", outbox_lease_seconds),
        )
        self._locks: dict[str, asyncio.Lock] = {}

    def check_width(self, columns: int) -> None:
        """A batch's width is bounded: its schema, profile and model all grow with it."""
        if columns > self.max_columns:
            raise InvalidArgument(
                f"the batch has {columns} columns; the limit is {self.max_columns}"
                " (setting CASCADE_INGEST_MAX_COLUMNS)"
            )

    async def ingest(
        self,
        dataset: str,
        frame: pd.DataFrame,
        batch_id: str,
        target: str,
        source: str,
        unreadable: Sequence[Rejection] = (),
    ) -> IngestResult:
        """Validate, clean and append one batch; `unreadable` are rows the reader already refused
        (with their line numbers), reported with the rest. The version's *data arrived* is stored
        with it in the outbox and published at once if Kafka takes it within `event_wait_seconds`;
        if not, the answer says the event is pending, and the relay publishes it later.

        Idempotent: a batch seen before changes nothing, and its version's event is stored again
        if it is missing (a version stored before the outbox existed)."""
        validate_dataset_name(dataset)
        self.check_width(len(frame.columns))
        lock = self._locks.setdefault(dataset, asyncio.Lock())
        async with lock:
            seen = self.store.batch(dataset, batch_id)
            if seen is not None:
                log.info("batch %s of %s seen before; nothing changes", batch_id[:12], dataset)
                result = IngestResult(batch_id, seen.version, False, seen.report)
                if seen.version:
                    await asyncio.to_thread(self._announce_again, dataset, seen.version, batch_id)
            else:
                result = await asyncio.to_thread(
                    self._append, dataset, frame, batch_id, target or "target", source, unreadable
                )
        if result.dataset_version and (result.created or seen is not None):
            drained = await self.outbox.announce(self.event_wait_seconds)
            pending = not drained and await asyncio.to_thread(
                self.store.event_pending, _event_id(dataset, result.dataset_version)
            )
            result = dataclasses.replace(result, event_pending=pending)
        return result

    async def _emit_in_its_trace(self, event: Event) -> None:
        """Publish as part of the trace the event was stored in: the relay may send it long after
        the upload (a Kafka outage), from its own task."""
        carrier = await asyncio.to_thread(self.store.trace_carrier, event.id)
        token = otel_context.attach(propagate.extract(carrier))
        try:
            await self.emit(event)
        finally:
            otel_context.detach(token)

    def _announce_again(self, dataset: str, version: str, batch_id: str) -> None:
        info = self.store.version(dataset, version)
        self.store.ensure_announced(
            _event(NewVersion(dataset, version, info.parent, info.rows, info.schema), batch_id)
        )

    def _append(
        self,
        dataset: str,
        frame: pd.DataFrame,
        batch_id: str,
        target: str,
        source: str,
        unreadable: Sequence[Rejection],
    ) -> IngestResult:
        schema = self.store.schema(dataset) or infer_schema(frame, target, self.max_classes)
        if target != schema.target and not (schema.declared and target == "target"):
            raise InvalidArgument(f"dataset {dataset!r} has target {schema.target!r}, not {target!r}")
        batch = clean(frame, schema, unreadable)
        report = batch.report()
        parent = self.store.head(dataset)
        version, _already_present = self.store.append_batch(
            dataset,
            schema,
            batch_id,
            batch.rows,
            report,
            batch.rejected,
            source,
            batch.hashes,
            announce=lambda new: _event(new, batch_id),
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
        self.check_width(len(schema.columns))
        lock = self._locks.setdefault(dataset, asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(self.store.register, dataset, schema)

    def suggest(self, frame: pd.DataFrame, target: str) -> Schema:
        """A schema inferred from a sample, for a person to confirm and register."""
        self.check_width(len(frame.columns))
        return suggest_schema(frame, target or "target", self.max_classes)


def _event_id(dataset: str, version: str) -> str:
    # Deterministic: the same version announced twice is recognisably the same event.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cascade:data-arrived:{dataset}:{version}"))


def _event(new: NewVersion, batch_id: str) -> DataArrived:
    return DataArrived(
        id=_event_id(new.dataset, new.version),
        source=SOURCE,
        subject=new.dataset,
        dataset=new.dataset,
        dataset_version=new.version,
        parent_version=new.parent,
        batch_id=batch_id,
        rows=new.rows,
        target=new.schema.target,
        task=new.schema.task,
    )
