"""The typed client of ingest: upload batches, describe datasets and their versions, and download a
version (or a slice of it) as a DataFrame, verified and resumable. Plain values in, records out."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Literal

import grpc
import pandas as pd
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError

from cascade.client.base import ServiceClient
from cascade.client.calls import RemoteService, call
from cascade.client.downloads import verified_download, verified_download_to_file
from cascade.client.records import Batch, Dataset, DatasetVersion, RejectedRow, UploadResult
from cascade.errors import InvalidArgument
from cascade.grpc_io import CHUNK_SIZE, file_chunks
from cascade.stubs.cascade.ingest.v1 import ingest_pb2 as pb
from cascade.stubs.cascade.ingest.v1 import ingest_pb2_grpc as pb_grpc

__all__ = ["FileFormat", "IngestClient", "file_format_of"]

FileFormat = Literal["csv", "parquet"]

_FORMATS: dict[FileFormat, pb.FileFormat.ValueType] = {
    "csv": pb.FILE_FORMAT_CSV,
    "parquet": pb.FILE_FORMAT_PARQUET,
}
_FORMATS_BY_SUFFIX: dict[str, FileFormat] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Every Parquet file starts with these four bytes.
_PARQUET_MAGIC = b"PAR1"


def file_format_of(data: bytes | Path) -> FileFormat:
    """A batch's format: a file's from its suffix, bytes' from Parquet's magic number (else CSV)."""
    if isinstance(data, Path):
        try:
            return _FORMATS_BY_SUFFIX[data.suffix.lower()]
        except KeyError:
            raise InvalidArgument(
                f"cannot tell the format of {data.name} from its suffix; give csv or parquet"
            ) from None
    return "parquet" if data.startswith(_PARQUET_MAGIC) else "csv"


class IngestClient(ServiceClient):
    """Ingest's RPCs as async methods. Failures are Cascade errors (cascade.errors) naming ingest
    and what was being done; `timeout` (seconds) bounds every call, None: no bound."""

    SERVICE = "ingest"

    def __init__(self, service: RemoteService, *, timeout: float | None = None) -> None:
        super().__init__(service, timeout=timeout)
        self._stub = pb_grpc.IngestServiceStub(service.channel)

    # -- batches -------------------------------------------------------------------------------
    async def upload_batch(
        self,
        data: bytes | Path,
        dataset: str,
        *,
        target: str = "target",
        file_format: FileFormat | None = None,
        source: str = "",
    ) -> UploadResult:
        """Upload one batch (a file's bytes, or the file itself, streamed in chunks). The same
        bytes again create nothing: the result names the version they made the first time."""
        chosen = file_format or file_format_of(data)
        if isinstance(data, Path):
            source = source or data.name
            if not data.is_file():  # noqa: ASYNC240 - a cheap local check, once per upload
                raise InvalidArgument(f"no such file: {data}")
        header = pb.BatchHeader(dataset=dataset, format=_FORMATS[chosen], target=target, source=source)
        response = await call(
            self.service,
            f"uploading a batch to {dataset}",
            lambda: self._stub.UploadBatch(_upload_requests(header, data), timeout=self.timeout),
        )
        return UploadResult.of(response)

    async def list_batches(self, dataset: str, version: str = "") -> list[Batch]:
        """A dataset's batches with their reports; only those in `version`'s lineage when given."""
        response = await call(
            self.service,
            f"listing the batches of {dataset}" + (f"@{version[:12]}" if version else ""),
            lambda: self._stub.ListBatches(
                pb.ListBatchesRequest(dataset=dataset, version=version), timeout=self.timeout
            ),
        )
        return [Batch.of(b) for b in response.batches]

    async def list_rejected_rows(self, dataset: str, batch_id: str) -> list[RejectedRow]:
        """Every row a batch's cleaning rejected, with the reason and the values as received."""
        response = await call(
            self.service,
            f"rejected rows of batch {batch_id} of {dataset}",
            lambda: self._stub.ListRejectedRows(
                pb.ListRejectedRowsRequest(dataset=dataset, batch_id=batch_id), timeout=self.timeout
            ),
        )
        return [RejectedRow(r.row, r.reason, r.values_json) for r in response.rows]

    # -- datasets ------------------------------------------------------------------------------
    async def register_dataset(self, dataset: str, schema: Mapping[str, Any]) -> Dataset:
        """Declare a dataset's schema, as JSON (the form `infer_schema` returns: features, target,
        task, policy); its batches are then cleaned by it. The same schema again changes nothing;
        another one for a dataset that has one is AlreadyExists."""
        request = pb.RegisterDatasetRequest(dataset=dataset, schema=_schema_message(schema))
        response = await call(
            self.service,
            f"registering dataset {dataset}",
            lambda: self._stub.RegisterDataset(request, timeout=self.timeout),
        )
        return Dataset.of(response)

    async def infer_schema(
        self, sample: bytes | Path, *, target: str = "target", file_format: FileFormat | None = None
    ) -> dict[str, Any]:
        """The schema ingest infers from a sample of a file (the whole file if small), as JSON for
        a person to check and then `register_dataset`; registers nothing."""
        chosen = file_format or file_format_of(sample)
        data = await asyncio.to_thread(sample.read_bytes) if isinstance(sample, Path) else sample
        request = pb.InferSchemaRequest(format=_FORMATS[chosen], data=data, target=target)
        response = await call(
            self.service,
            "inferring a schema",
            lambda: self._stub.InferSchema(request, timeout=self.timeout),
        )
        schema: dict[str, Any] = MessageToDict(response, preserving_proto_field_name=True)
        return schema

    async def get_dataset(self, dataset: str) -> Dataset:
        response = await call(
            self.service,
            f"describing dataset {dataset}",
            lambda: self._stub.GetDataset(pb.GetDatasetRequest(dataset=dataset), timeout=self.timeout),
        )
        return Dataset.of(response)

    async def list_datasets(self) -> list[Dataset]:
        response = await call(
            self.service,
            "listing datasets",
            lambda: self._stub.ListDatasets(pb.ListDatasetsRequest(), timeout=self.timeout),
        )
        return [Dataset.of(d) for d in response.datasets]

    async def get_dataset_version(self, dataset: str, version: str = "") -> DatasetVersion:
        """A dataset version's description; an empty `version` means the dataset's latest."""
        response = await call(
            self.service,
            f"describing {_name(dataset, version)}",
            lambda: self._stub.GetDatasetVersion(
                pb.GetDatasetVersionRequest(dataset=dataset, version=version), timeout=self.timeout
            ),
        )
        return DatasetVersion.of(response)

    async def list_dataset_versions(self, dataset: str) -> list[DatasetVersion]:
        """A dataset's versions, oldest first."""
        response = await call(
            self.service,
            f"listing the versions of {dataset}",
            lambda: self._stub.ListDatasetVersions(
                pb.ListDatasetVersionsRequest(dataset=dataset), timeout=self.timeout
            ),
        )
        return [DatasetVersion.of(v) for v in response.versions]

    async def download_dataset(
        self, dataset: str, version: str = "", *, row_start: int = 0, row_end: int = 0, last_batches: int = 0
    ) -> tuple[DatasetVersion, pd.DataFrame]:
        """A dataset version's description and its rows: all of them, or a slice (rows
        [row_start, row_end), row_end 0 meaning the last; or the rows its latest `last_batches`
        added). An empty `version` means the latest, resolved first so a resumed download reads
        the same version."""
        info = await self.get_dataset_version(dataset, version)
        data = await self.download_dataset_file(
            dataset, info.version, row_start=row_start, row_end=row_end, last_batches=last_batches
        )
        return info, await asyncio.to_thread(pd.read_parquet, io.BytesIO(data))

    async def download_dataset_file(
        self, dataset: str, version: str, *, row_start: int = 0, row_end: int = 0, last_batches: int = 0
    ) -> bytes:
        """A dataset version (or a slice of it, as in `download_dataset`) as the bytes of one
        Parquet file, verified against its sha256 and resumed when the stream breaks."""

        def request_from(offset: int) -> grpc.aio.UnaryStreamCall[Any, pb.DataChunk]:
            request = pb.DownloadDatasetVersionRequest(
                dataset=dataset,
                version=version,
                offset=offset,
                row_start=row_start,
                row_end=row_end,
                last_batches=last_batches,
            )
            return self._stub.DownloadDatasetVersion(request, timeout=self.timeout)

        return await verified_download(self.service, f"downloading {_name(dataset, version)}", request_from)

    async def download_dataset_to_file(
        self, dataset: str, version: str, path: Path, *, last_batches: int = 0
    ) -> int:
        """A dataset version (or its latest `last_batches` batches) streamed into the Parquet file at
        `path`, chunk by chunk, never whole in memory; verified as `download_dataset_file` is. Its size."""

        def request_from(offset: int) -> grpc.aio.UnaryStreamCall[Any, pb.DataChunk]:
            request = pb.DownloadDatasetVersionRequest(
                dataset=dataset, version=version, offset=offset, last_batches=last_batches
            )
            return self._stub.DownloadDatasetVersion(request, timeout=self.timeout)

        what = f"downloading {_name(dataset, version)}"
        return await verified_download_to_file(self.service, what, request_from, path)


def _schema_message(schema: Mapping[str, Any]) -> pb.DatasetSchema:
    """A schema in JSON as its message; whether it was declared is ingest's to say, not the caller's."""
    fields = {name: value for name, value in schema.items() if name != "declared"}
    try:
        return ParseDict(fields, pb.DatasetSchema())
    except ParseError as error:
        raise InvalidArgument(f"not a valid dataset schema: {error}") from None


def _name(dataset: str, version: str) -> str:
    return f"{dataset}@{version[:12] or 'latest'}"


async def _upload_requests(
    header: pb.BatchHeader, data: bytes | Path
) -> AsyncIterator[pb.UploadBatchRequest]:
    """The UploadBatch stream: the header first, then the batch in chunks."""
    yield pb.UploadBatchRequest(header=header)
    if isinstance(data, Path):
        pieces = file_chunks(data)
        # Reading the file blocks: a chunk at a time off the event loop.
        while piece := await asyncio.to_thread(next, pieces, None):
            yield pb.UploadBatchRequest(chunk=piece[1])
        return
    for start in range(0, len(data), CHUNK_SIZE):
        yield pb.UploadBatchRequest(chunk=data[start : start + CHUNK_SIZE])
