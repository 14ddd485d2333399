import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("image", "model", "request_id", "heatmap")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model: str
    request_id: str
    heatmap: bool
    def __init__(self, image: _Optional[bytes] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ..., heatmap: _Optional[bool] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("width", "height", "values", "threshold", "overlay_png")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    values: _containers.RepeatedScalarFieldContainer[float]
    threshold: float
    overlay_png: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ..., threshold: _Optional[float] = ..., overlay_png: _Optional[bytes] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("label", "scores", "needs_review", "model_name", "model_version", "request_id", "top_probability", "reject_threshold", "batch_size", "server_latency_ms", "error", "heatmap")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    NEEDS_REVIEW_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    REJECT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SERVER_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    label: str
    scores: _containers.RepeatedCompositeFieldContainer[ClassScore]
    needs_review: bool
    model_name: str
    model_version: str
    request_id: str
    top_probability: float
    reject_threshold: float
    batch_size: int
    server_latency_ms: float
    error: ItemError
    heatmap: Heatmap
    def __init__(self, label: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., needs_review: _Optional[bool] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ..., top_probability: _Optional[float] = ..., reject_threshold: _Optional[float] = ..., batch_size: _Optional[int] = ..., server_latency_ms: _Optional[float] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., heatmap: _Optional[_Union[Heatmap, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "labels", "image_size", "resize_mode", "reject_threshold", "source_uri", "is_default", "loaded_at", "method", "backbone", "loaded", "heatmap")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_MODE_FIELD_NUMBER: _ClassVar[int]
    REJECT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    image_size: int
    resize_mode: str
    reject_threshold: float
    source_uri: str
    is_default: bool
    loaded_at: _timestamp_pb2.Timestamp
    method: str
    backbone: str
    loaded: bool
    heatmap: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., image_size: _Optional[int] = ..., resize_mode: _Optional[str] = ..., reject_threshold: _Optional[float] = ..., source_uri: _Optional[str] = ..., is_default: _Optional[bool] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., method: _Optional[str] = ..., backbone: _Optional[str] = ..., loaded: _Optional[bool] = ..., heatmap: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("request_id", "label", "image", "note", "model")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    label: str
    image: bytes
    note: str
    model: str
    def __init__(self, request_id: _Optional[str] = ..., label: _Optional[str] = ..., image: _Optional[bytes] = ..., note: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("stored_path", "predicted", "duplicate")
    STORED_PATH_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    stored_path: str
    predicted: str
    duplicate: bool
    def __init__(self, stored_path: _Optional[str] = ..., predicted: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...
