import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FileFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_FORMAT_UNSPECIFIED: _ClassVar[FileFormat]
    FILE_FORMAT_CSV: _ClassVar[FileFormat]
    FILE_FORMAT_PARQUET: _ClassVar[FileFormat]
FILE_FORMAT_UNSPECIFIED: FileFormat
FILE_FORMAT_CSV: FileFormat
FILE_FORMAT_PARQUET: FileFormat

class BatchHeader(_message.Message):
    __slots__ = ("dataset", "format", "target", "source")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    format: FileFormat
    target: str
    source: str
    def __init__(self, dataset: _Optional[str] = ..., format: _Optional[_Union[FileFormat, str]] = ..., target: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class UploadBatchRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: BatchHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[BatchHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class RejectedRow(_message.Message):
    __slots__ = ("row", "reason")
    ROW_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    row: int
    reason: str
    def __init__(self, row: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class BatchReport(_message.Message):
    __slots__ = ("rows_received", "rows_accepted", "rows_rejected", "rows_duplicate", "rejected")
    ROWS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ROWS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    rows_received: int
    rows_accepted: int
    rows_rejected: int
    rows_duplicate: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedRow]
    def __init__(self, rows_received: _Optional[int] = ..., rows_accepted: _Optional[int] = ..., rows_rejected: _Optional[int] = ..., rows_duplicate: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedRow, _Mapping]]] = ...) -> None: ...

class UploadBatchResponse(_message.Message):
    __slots__ = ("batch_id", "dataset_version", "created", "report")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    dataset_version: str
    created: bool
    report: BatchReport
    def __init__(self, batch_id: _Optional[str] = ..., dataset_version: _Optional[str] = ..., created: _Optional[bool] = ..., report: _Optional[_Union[BatchReport, _Mapping]] = ...) -> None: ...

class GetDatasetVersionRequest(_message.Message):
    __slots__ = ("dataset", "version")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: str
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class FeatureProfile(_message.Message):
    __slots__ = ("name", "count", "missing_rate", "mean", "std", "min", "max", "quantiles")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MISSING_RATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    name: str
    count: int
    missing_rate: float
    mean: float
    std: float
    min: float
    max: float
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ..., missing_rate: _Optional[float] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., quantiles: _Optional[_Iterable[float]] = ...) -> None: ...

class DatasetVersion(_message.Message):
    __slots__ = ("dataset", "version", "parent", "batch_ids", "rows", "target", "features", "task", "profile", "created_at", "size_bytes")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    BATCH_IDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: str
    parent: str
    batch_ids: _containers.RepeatedScalarFieldContainer[str]
    rows: int
    target: str
    features: _containers.RepeatedScalarFieldContainer[str]
    task: str
    profile: _containers.RepeatedCompositeFieldContainer[FeatureProfile]
    created_at: _timestamp_pb2.Timestamp
    size_bytes: int
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[str] = ..., parent: _Optional[str] = ..., batch_ids: _Optional[_Iterable[str]] = ..., rows: _Optional[int] = ..., target: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., task: _Optional[str] = ..., profile: _Optional[_Iterable[_Union[FeatureProfile, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class DownloadDatasetVersionRequest(_message.Message):
    __slots__ = ("dataset", "version", "offset")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: str
    offset: int
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("data", "offset", "total_size", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_size: int
    sha256: str
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
