"""IngestService over gRPC: converts protobuf to domain calls and back, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp

from services.ingest.cleaning import read_csv, read_parquet
from services.ingest.core import IngestCore, batch_id_of
from services.ingest.store import VersionInfo
from shared.errors import InvalidArgument, grpc_errors
from shared.grpc_io import ServicerContext, file_chunks, receive_to_file
from shared.stubs.cascade.ingest.v1 import ingest_pb2 as pb
from shared.stubs.cascade.ingest.v1 import ingest_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IngestService"].full_name


class IngestServicer(pb_grpc.IngestServiceServicer):
    def __init__(self, core: IngestCore, max_upload_bytes: int) -> None:
        self.core = core
        self.max_upload_bytes = max_upload_bytes

    @grpc_errors
    async def UploadBatch(
        self, request_iterator: AsyncIterator[pb.UploadBatchRequest], context: ServicerContext
    ) -> pb.UploadBatchResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("the first UploadBatch message must carry the header")
        header = first.header

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.HasField("header"):
                    raise InvalidArgument("only the first UploadBatch message may carry a header")
                yield message.chunk

        received = await receive_to_file(chunks(), self.core.store.root / "spool", self.max_upload_bytes)
        try:
            data = received.path.read_bytes()
        finally:
            received.discard()
        if header.format == pb.FILE_FORMAT_PARQUET:
            frame = read_parquet(data)
        elif header.format in (pb.FILE_FORMAT_CSV, pb.FILE_FORMAT_UNSPECIFIED):
            frame = read_csv(data)
        else:
            raise InvalidArgument(f"unknown file format {header.format}")
        result = await self.core.ingest(
            header.dataset,
            frame,
            batch_id_of(data),
            header.target or "target",
            header.source or "grpc-upload",
        )
        report = result.report
        return pb.UploadBatchResponse(
            batch_id=result.batch_id,
            dataset_version=result.dataset_version or "",
            created=result.created,
            report=pb.BatchReport(
                rows_received=report["rows_received"],
                rows_accepted=report["rows_accepted"],
                rows_rejected=report["rows_rejected"],
                rows_duplicate=report["rows_duplicate"],
                rejected=[
                    pb.RejectedRow(row=r["row"], reason=r["reason"]) for r in report["rejected"][:1000]
                ],
            ),
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
        path = self.core.store.version_path(info.version)
        if not 0 <= request.offset <= info.size_bytes:
            raise InvalidArgument(f"offset {request.offset} is outside 0..{info.size_bytes}")
        for offset, data in file_chunks(path, request.offset):
            yield pb.DataChunk(data=data, offset=offset, total_size=info.size_bytes, sha256=info.file_sha256)


def _version_message(info: VersionInfo) -> pb.DatasetVersion:
    created = Timestamp()
    created.FromDatetime(info.created_at)
    return pb.DatasetVersion(
        dataset=info.dataset,
        version=info.version,
        parent=info.parent or "",
        batch_ids=info.batch_ids,
        rows=info.rows,
        target=info.schema.target,
        features=info.schema.features,
        task=info.schema.task,
        profile=[pb.FeatureProfile(**entry) for entry in info.profile],
        created_at=created,
        size_bytes=info.size_bytes,
    )
