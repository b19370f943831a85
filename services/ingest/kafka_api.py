"""Ingest's Kafka side: raw JSON records from any producer become batches."""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from cascade.errors import InvalidArgument
from cascade.events import RawRecords, Topics
from cascade.messaging import subscriber_options
from cascade.services.ingest.cleaning import read_records
from cascade.services.ingest.core import IngestCore, records_batch_id


def register(broker: KafkaBroker, core: IngestCore, topics: Topics, max_record_bytes: int) -> None:
    @broker.subscriber(topics.declared(RawRecords), **subscriber_options(f"{topics.prefix}.ingest"))
    async def on_raw_records(message: KafkaMessage) -> None:
        # The body is parsed here, after the size check, so that each failure has its own reason;
        # every one is permanent, so the message goes to the dead-letter topic with it.
        size = len(message.body)
        if size > max_record_bytes:
            raise InvalidArgument(
                f"message of {size} bytes exceeds the limit of {max_record_bytes} bytes;"
                " split the records into smaller batches"
            )
        batch = RawRecords.model_validate_json(message.body)  # ValidationError: "Invalid JSON: …"
        await core.ingest(
            batch.dataset,
            read_records(batch.records),
            records_batch_id(batch.records),
            batch.target,
            batch.source,
        )
