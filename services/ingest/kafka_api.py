"""Ingest's Kafka side: raw JSON records from any producer become batches."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from services.ingest.cleaning import read_records
from services.ingest.core import IngestCore, records_batch_id
from shared.events import RawRecords, Topics
from shared.messaging import subscriber_options


def register(broker: KafkaBroker, core: IngestCore, topics: Topics) -> None:
    @broker.subscriber(topics.for_event(RawRecords), **subscriber_options(f"{topics.prefix}.ingest"))
    async def on_raw_records(batch: RawRecords) -> None:
        await core.ingest(
            batch.dataset,
            read_records(batch.records),
            records_batch_id(batch.records),
            batch.target,
            batch.source,
        )
