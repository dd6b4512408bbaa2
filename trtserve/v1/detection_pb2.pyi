from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_GRAY8: _ClassVar[PixelFormat]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_OK: _ClassVar[Status]
    STATUS_DROPPED: _ClassVar[Status]
    STATUS_ERROR: _ClassVar[Status]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_UNLOADING: _ClassVar[ModelState]
    MODEL_STATE_UNAVAILABLE: _ClassVar[ModelState]
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_BGR8: PixelFormat
PIXEL_FORMAT_RGB8: PixelFormat
PIXEL_FORMAT_GRAY8: PixelFormat
STATUS_UNSPECIFIED: Status
STATUS_OK: Status
STATUS_DROPPED: Status
STATUS_ERROR: Status
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_UNLOADING: ModelState
MODEL_STATE_UNAVAILABLE: ModelState

class RawImage(_message.Message):
    __slots__ = ("pixels", "height", "width", "format")
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    pixels: bytes
    height: int
    width: int
    format: PixelFormat
    def __init__(self, pixels: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class Thresholds(_message.Message):
    __slots__ = ("score", "iou", "max_detections")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    IOU_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    score: float
    iou: float
    max_detections: int
    def __init__(self, score: _Optional[float] = ..., iou: _Optional[float] = ..., max_detections: _Optional[int] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("model", "stream_id", "sequence", "capture_time_unix_ns", "image", "thresholds", "outputs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    stream_id: str
    sequence: int
    capture_time_unix_ns: int
    image: Image
    thresholds: Thresholds
    outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., stream_id: _Optional[str] = ..., sequence: _Optional[int] = ..., capture_time_unix_ns: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., thresholds: _Optional[_Union[Thresholds, _Mapping]] = ..., outputs: _Optional[_Iterable[str]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "score", "class_id", "label")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    box: Box
    score: float
    class_id: int
    label: str
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ..., class_id: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_seconds", "inference_seconds", "total_seconds", "preprocess_seconds", "postprocess_seconds")
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    queue_seconds: float
    inference_seconds: float
    total_seconds: float
    preprocess_seconds: float
    postprocess_seconds: float
    def __init__(self, queue_seconds: _Optional[float] = ..., inference_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., preprocess_seconds: _Optional[float] = ..., postprocess_seconds: _Optional[float] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("stream_id", "sequence", "status", "error_code", "reason", "detections", "frame_width", "frame_height", "timing", "model", "precision", "tensors")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FRAME_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    sequence: int
    status: Status
    error_code: str
    reason: str
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    frame_width: int
    frame_height: int
    timing: Timing
    model: str
    precision: str
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, stream_id: _Optional[str] = ..., sequence: _Optional[int] = ..., status: _Optional[_Union[Status, str]] = ..., error_code: _Optional[str] = ..., reason: _Optional[str] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., frame_width: _Optional[int] = ..., frame_height: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., model: _Optional[str] = ..., precision: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BatcherSettings(_message.Message):
    __slots__ = ("max_batch_size", "max_queue_delay_ms", "max_queue_size", "preferred_batch_sizes", "instances")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    preferred_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    instances: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_queue_delay_ms: _Optional[float] = ..., max_queue_size: _Optional[int] = ..., preferred_batch_sizes: _Optional[_Iterable[int]] = ..., instances: _Optional[int] = ...) -> None: ...

class BatcherStats(_message.Message):
    __slots__ = ("batches", "frames", "mean_batch_size", "queue_depth", "engine_cpu_seconds")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    batches: int
    frames: int
    mean_batch_size: float
    queue_depth: int
    engine_cpu_seconds: float
    def __init__(self, batches: _Optional[int] = ..., frames: _Optional[int] = ..., mean_batch_size: _Optional[float] = ..., queue_depth: _Optional[int] = ..., engine_cpu_seconds: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "head", "classes", "input_height", "input_width", "precisions", "serving_precision", "backend", "batcher", "stats", "ready", "drift", "version", "last_control_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    SERVING_PRECISION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    BATCHER_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTROL_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    head: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    input_height: int
    input_width: int
    precisions: _containers.RepeatedScalarFieldContainer[str]
    serving_precision: str
    backend: str
    batcher: BatcherSettings
    stats: BatcherStats
    ready: bool
    drift: DriftSummary
    version: int
    last_control_error: str
    def __init__(self, name: _Optional[str] = ..., head: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., precisions: _Optional[_Iterable[str]] = ..., serving_precision: _Optional[str] = ..., backend: _Optional[str] = ..., batcher: _Optional[_Union[BatcherSettings, _Mapping]] = ..., stats: _Optional[_Union[BatcherStats, _Mapping]] = ..., ready: _Optional[bool] = ..., drift: _Optional[_Union[DriftSummary, _Mapping]] = ..., version: _Optional[int] = ..., last_control_error: _Optional[str] = ...) -> None: ...

class ModelControlRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ModelControlResponse(_message.Message):
    __slots__ = ("name", "version", "state", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    state: ModelState
    message: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[ModelState, str]] = ..., message: _Optional[str] = ...) -> None: ...

class PullCalibrationFramesRequest(_message.Message):
    __slots__ = ("model", "after_id", "up_to_id", "max_frames", "max_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    UP_TO_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    after_id: int
    up_to_id: int
    max_frames: int
    max_bytes: int
    def __init__(self, model: _Optional[str] = ..., after_id: _Optional[int] = ..., up_to_id: _Optional[int] = ..., max_frames: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class CalibrationFrame(_message.Message):
    __slots__ = ("id", "agreement", "png", "sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    id: int
    agreement: float
    png: bytes
    sha256: str
    def __init__(self, id: _Optional[int] = ..., agreement: _Optional[float] = ..., png: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...

class PullCalibrationFramesResponse(_message.Message):
    __slots__ = ("frame", "snapshot_last_id", "remaining", "reservoir_id")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_LAST_ID_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESERVOIR_ID_FIELD_NUMBER: _ClassVar[int]
    frame: CalibrationFrame
    snapshot_last_id: int
    remaining: int
    reservoir_id: str
    def __init__(self, frame: _Optional[_Union[CalibrationFrame, _Mapping]] = ..., snapshot_last_id: _Optional[int] = ..., remaining: _Optional[int] = ..., reservoir_id: _Optional[str] = ...) -> None: ...

class DriftSummary(_message.Message):
    __slots__ = ("sample_rate", "shadow_precision", "samples", "skipped", "errors", "window_frames", "agreement_f1", "mean_iou", "mean_score_abs_diff", "missed", "extra", "out_of_range_ratio", "below_threshold", "ranges_source", "stale", "shadow_restarts", "skipped_shadow_down")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_PRECISION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FRAMES_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_F1_FIELD_NUMBER: _ClassVar[int]
    MEAN_IOU_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORE_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_RANGE_RATIO_FIELD_NUMBER: _ClassVar[int]
    BELOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RANGES_SOURCE_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_SHADOW_DOWN_FIELD_NUMBER: _ClassVar[int]
    sample_rate: float
    shadow_precision: str
    samples: int
    skipped: int
    errors: int
    window_frames: int
    agreement_f1: float
    mean_iou: float
    mean_score_abs_diff: float
    missed: int
    extra: int
    out_of_range_ratio: float
    below_threshold: bool
    ranges_source: str
    stale: bool
    shadow_restarts: int
    skipped_shadow_down: int
    def __init__(self, sample_rate: _Optional[float] = ..., shadow_precision: _Optional[str] = ..., samples: _Optional[int] = ..., skipped: _Optional[int] = ..., errors: _Optional[int] = ..., window_frames: _Optional[int] = ..., agreement_f1: _Optional[float] = ..., mean_iou: _Optional[float] = ..., mean_score_abs_diff: _Optional[float] = ..., missed: _Optional[int] = ..., extra: _Optional[int] = ..., out_of_range_ratio: _Optional[float] = ..., below_threshold: _Optional[bool] = ..., ranges_source: _Optional[str] = ..., stale: _Optional[bool] = ..., shadow_restarts: _Optional[int] = ..., skipped_shadow_down: _Optional[int] = ...) -> None: ...
