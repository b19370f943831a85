import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetDriftReportRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class FeatureDrift(_message.Message):
    __slots__ = ("feature", "test", "statistic", "p_value", "threshold", "drifted")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    feature: str
    test: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool
    def __init__(self, feature: _Optional[str] = ..., test: _Optional[str] = ..., statistic: _Optional[float] = ..., p_value: _Optional[float] = ..., threshold: _Optional[float] = ..., drifted: _Optional[bool] = ...) -> None: ...

class DriftReport(_message.Message):
    __slots__ = ("model", "model_version", "reference_dataset_version", "window_size", "features", "dataset_drifted", "computed_at", "predictions_seen")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DATASET_DRIFTED_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_SEEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    reference_dataset_version: str
    window_size: int
    features: _containers.RepeatedCompositeFieldContainer[FeatureDrift]
    dataset_drifted: bool
    computed_at: _timestamp_pb2.Timestamp
    predictions_seen: int
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ..., reference_dataset_version: _Optional[str] = ..., window_size: _Optional[int] = ..., features: _Optional[_Iterable[_Union[FeatureDrift, _Mapping]]] = ..., dataset_drifted: _Optional[bool] = ..., computed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., predictions_seen: _Optional[int] = ...) -> None: ...
