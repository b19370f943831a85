"""IngestService over gRPC: converts protobuf to domain calls and back, nothing more."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.timestamp_pb2 import Timestamp

from cascade.errors import InvalidArgument, NotFound, grpc_errors
from cascade.grpc_io import ServicerContext, file_chunks, receive_to_file, split_upload
from cascade.security import method_roles
from cascade.services.ingest.cleaning import ReadBatch, read_csv, read_parquet
from cascade.services.ingest.core import IngestCore, batch_id_of
from cascade.services.ingest.schema import Schema
from cascade.services.ingest.store import BatchRecord, VersionInfo
from cascade.stubs.cascade.ingest.v1 import ingest_pb2 as pb
from cascade.stubs.cascade.ingest.v1 import ingest_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IngestService"].full_name
# The role each RPC needs (cascade.security).
ROLES = method_roles(
    SERVICE_NAME,
    {
        "UploadBatch": "ingest:write",
        "RegisterDataset": "ingest:write",
        "GetDatasetVersion": "ingest:read",
        "DownloadDatasetVersion": "ingest:read",
        "ListDatasetVersions": "ingest:read",
        "GetDataset": "ingest:read",
        "ListDatasets": "ingest:read",
        "InferSchema": "ingest:read",
        "ListBatches": "ingest:read",
        "ListRejectedRows": "ingest:read",
    },
)
_REPORT_LIMIT = 1000


class IngestServicer(pb_grpc.IngestServiceServicer):
    def __init__(self, core: IngestCore, max_upload_bytes: int) -> None:
        self.core = core
        self.max_upload_bytes = max_upload_bytes

    @grpc_errors
    async def UploadBatch(
        self, request_iterator: AsyncIterator[pb.UploadBatchRequest], context: ServicerContext
    ) -> pb.UploadBatchResponse:
        header, chunks = await split_upload(request_iterator, "UploadBatch")

        received = await receive_to_file(chunks, self.core.store.root / "spool", self.max_upload_bytes)
        try:
            data = await asyncio.to_thread(received.path.read_bytes)
        finally:
            received.discard()
        batch = await asyncio.to_thread(_read, header.format, data, self.core.max_columns)
        result = await self.core.ingest(
            header.dataset,
            batch.frame,
            await asyncio.to_thread(batch_id_of, data),
            header.target or "target",
            header.source or "grpc-upload",
            batch.unreadable,
        )
        return pb.UploadBatchResponse(
            batch_id=result.batch_id,
            dataset_version=result.dataset_version or "",
            created=result.created,
            report=report_message(result.report),
            event_pending=result.event_pending,
        )

    @grpc_errors
    async def GetDatasetVersion(
        self, request: pb.GetDatasetVersionRequest, context: ServicerContext
    ) -> pb.DatasetVersion:
        return _version_message(self.core.store.version(request.dataset, request.version))

    @grpc_errors
    async def DownloadDatasetVersion(
        self, request: pb.DownloadDatasetVersionRequest, context: ServicerContext
    ) -> AsyncIterator[pb.DataChunk]:
        info = self.core.store.version(request.dataset, request.version)
        path, digest = await asyncio.to_thread(
            self.core.store.export,
            info.dataset,
            info.version,
            request.row_start,
            request.row_end,
            request.last_batches,
        )
        size = path.stat().st_size
        if not 0 <= request.offset <= size:
            raise InvalidArgument(f"offset {request.offset} is outside 0..{size}")
        for offset, data in file_chunks(path, request.offset):
            yield pb.DataChunk(data=data, offset=offset, total_size=size, sha256=digest)

    @grpc_errors
    async def ListDatasetVersions(
        self, request: pb.ListDatasetVersionsRequest, context: ServicerContext
    ) -> pb.ListDatasetVersionsResponse:
        versions = await asyncio.to_thread(self.core.store.versions, request.dataset)
        return pb.ListDatasetVersionsResponse(versions=[_version_message(v) for v in versions])

    @grpc_errors
    async def RegisterDataset(
        self, request: pb.RegisterDatasetRequest, context: ServicerContext
    ) -> pb.Dataset:
        schema = await self.core.register(request.dataset, schema_from_message(request.schema))
        return self._dataset(request.dataset, schema)

    @grpc_errors
    async def GetDataset(self, request: pb.GetDatasetRequest, context: ServicerContext) -> pb.Dataset:
        for name, schema, _head, _count in self.core.store.datasets():
            if name == request.dataset:
                return self._dataset(name, schema)
        raise NotFound(f"dataset {request.dataset!r} does not exist")

    @grpc_errors
    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: ServicerContext
    ) -> pb.ListDatasetsResponse:
        return pb.ListDatasetsResponse(
            datasets=[
                pb.Dataset(dataset=name, schema=schema_message(schema), head_version=head or "", versions=n)
                for name, schema, head, n in self.core.store.datasets()
            ]
        )

    @grpc_errors
    async def InferSchema(self, request: pb.InferSchemaRequest, context: ServicerContext) -> pb.DatasetSchema:
        if not request.data:
            raise InvalidArgument("the sample is empty")
        batch = await asyncio.to_thread(_read, request.format, request.data, self.core.max_columns)
        return schema_message(await asyncio.to_thread(self.core.suggest, batch.frame, request.target))

    @grpc_errors
    async def ListBatches(
        self, request: pb.ListBatchesRequest, context: ServicerContext
    ) -> pb.ListBatchesResponse:
        if self.core.store.schema(request.dataset) is None:
            raise NotFound(f"dataset {request.dataset!r} does not exist")
        batches = self.core.store.batches(request.dataset, request.version)
        return pb.ListBatchesResponse(batches=[_batch_message(b) for b in batches])

    @grpc_errors
    async def ListRejectedRows(
        self, request: pb.ListRejectedRowsRequest, context: ServicerContext
    ) -> pb.ListRejectedRowsResponse:
        rows = self.core.store.rejected_rows(request.dataset, request.batch_id)
        return pb.ListRejectedRowsResponse(
            rows=[pb.RejectedRow(row=r.row, reason=r.reason, values_json=json.dumps(r.values)) for r in rows]
        )

    def _dataset(self, name: str, schema: Schema) -> pb.Dataset:
        versions = self.core.store.versions(name)
        return pb.Dataset(
            dataset=name,
            schema=schema_message(schema),
            head_version=self.core.store.head(name) or "",
            versions=len(versions),
        )


def _read(file_format: int, data: bytes, max_columns: int) -> ReadBatch:
    if file_format == pb.FILE_FORMAT_PARQUET:
        return read_parquet(data)
    if file_format in (pb.FILE_FORMAT_CSV, pb.FILE_FORMAT_UNSPECIFIED):
        return read_csv(data, max_columns)
    raise InvalidArgument(f"unknown file format {file_format}")


def schema_message(schema: Schema) -> pb.DatasetSchema:
    message = pb.DatasetSchema()
    ParseDict(schema.to_dict(), message)
    return message


def schema_from_message(message: pb.DatasetSchema) -> Schema:
    data = MessageToDict(message, preserving_proto_field_name=True)
    policy = data.get("policy", {})
    # Unset strings and numbers mean "the default".
    data["policy"] = {k: v for k, v in policy.items() if v not in ("", 0, 0.0)}
    data.setdefault("features", [])
    data.setdefault("task", "")
    return Schema.from_dict(data, declared=True)


def report_message(report: dict[str, Any]) -> pb.BatchReport:
    return pb.BatchReport(
        rows_received=report["rows_received"],
        rows_accepted=report["rows_accepted"],
        rows_rejected=report["rows_rejected"],
        rows_duplicate=report["rows_duplicate"],
        rows_repaired=report.get("rows_repaired", 0),
        rows_flagged=report.get("rows_flagged", 0),
        rejected=[
            pb.RejectedRow(row=r["row"], reason=r["reason"]) for r in report["rejected"][:_REPORT_LIMIT]
        ],
        repaired=[
            pb.RowNote(row=r["row"], note=r["note"]) for r in report.get("repaired", [])[:_REPORT_LIMIT]
        ],
        flagged=[pb.RowNote(row=r["row"], note=r["note"]) for r in report.get("flagged", [])[:_REPORT_LIMIT]],
        issues=report.get("issues", {}),
    )


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _batch_message(batch: BatchRecord) -> pb.Batch:
    return pb.Batch(
        batch_id=batch.batch_id,
        version=batch.version or "",
        source=batch.source,
        received_at=_timestamp(datetime.fromisoformat(batch.received_at)),
        report=report_message(batch.report),
    )


def _profile_message(entry: dict[str, Any]) -> pb.FeatureProfile:
    return pb.FeatureProfile(
        name=entry["name"],
        count=entry["count"],
        missing_rate=entry["missing_rate"],
        mean=entry["mean"],
        std=entry["std"],
        min=entry["min"],
        max=entry["max"],
        quantiles=entry["quantiles"],
        type=entry.get("type", "numeric"),
        histogram_edges=entry.get("histogram_edges", []),
        histogram_counts=entry.get("histogram_counts", []),
        categories=entry.get("categories", {}),
    )


def _version_message(info: VersionInfo) -> pb.DatasetVersion:
    return pb.DatasetVersion(
        dataset=info.dataset,
        version=info.version,
        parent=info.parent or "",
        batch_ids=info.batch_ids,
        rows=info.rows,
        target=info.schema.target,
        features=info.schema.names,
        task=info.schema.task,
        profile=[_profile_message(entry) for entry in info.profile],
        created_at=_timestamp(info.created_at),
        size_bytes=info.size_bytes,
        segments=info.segments,
    )
