from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cascade.objectstore import ObjectStoreSettings
from cascade.settings import ServiceSettings


class IngestSettings(ServiceSettings, ObjectStoreSettings):
    model_config = SettingsConfigDict(env_prefix="CASCADE_INGEST_", extra="ignore", frozen=True)

    grpc_port: int = Field(50051, description="gRPC port of IngestService.")
    segment_url: str = Field(
        "",
        description="Where Parquet segments are stored besides <data_dir>/segments: s3://bucket/prefix"
        " (with the s3_* settings) or a directory; empty: only there. Replicas share an s3:// store.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the metadata database (datasets, versions, batches, outbox),"
        " e.g. postgresql+psycopg://user:pw@host/db, which replicas can share; empty means SQLite"
        " (WAL) at <data_dir>/ingest.sqlite3. Segments stay under data_dir either way.",
    )
    max_upload_bytes: int = Field(512 * 1024 * 1024, description="Largest batch file accepted.")
    max_record_bytes: int = Field(
        512 * 1024,
        description="Largest raw-records message accepted from Kafka; a larger one is dead-lettered"
        " (below the broker's message.max.bytes, so the limit is ours and the reason is recorded).",
    )
    max_classes: int = Field(
        20, description="A target with at most this many integer values is a class label."
    )
    max_columns: int = Field(
        1000,
        description="Widest batch accepted (features and target); a wider one is INVALID_ARGUMENT."
        " Schemas, profiles and models all grow with the width.",
    )
    event_wait_seconds: float = Field(
        0.25,
        description="How long an upload waits for Kafka to take its data-arrived event before it"
        " answers 'event pending' (the event is stored; the outbox relay publishes it later).",
    )
    outbox_interval_seconds: float = Field(
        1.0,
        description="How often the outbox relay retries events Kafka has not taken, and how often a"
        " replica whose relay does not hold the outbox's lease tries to take it.",
    )
    outbox_lease_seconds: float = Field(
        5.0,
        gt=0,
        description="Replicas sharing the database publish the outbox one at a time, whichever"
        " holds its lease; a holder that dies lets it lapse after this long, and another takes over.",
    )
